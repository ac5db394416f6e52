# shellcheck shell=bash
# Container images, sourced by devenv/dev.sh. No Docker engine and no
# container registry are reachable here, so:
#   - the base `docker.io/library/debian:bookworm-slim` is made from Debian
#     packages with mmdebstrap (minbase, with the official slim image's
#     dpkg excludes) and tagged under its usual name, so the project's
#     Dockerfiles build unchanged with docker, podman or buildah;
#   - every image is built daemonless with buildah (its storage and layer
#     cache in $CACHE/containers, so a second run rebuilds nothing);
#   - images are exported as docker archives and imported into the node's
#     containerd, or loaded into minikube with `minikube image load`.
#
# Image names: the project's own images keep their published names
# (ghcr.io/fleetward/<name>:<version>) so the chart's defaults find them on
# the node; the local stack's stand-ins for public images (PostgreSQL,
# Kafka, Prometheus) and the node's own (pause, CoreDNS) are localhost/….

FLEETWARD_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
IMAGE_REGISTRY=${FLEETWARD_IMAGE_REGISTRY:-ghcr.io/fleetward}
BASE_IMAGE=docker.io/library/debian:bookworm-slim
BUILDAH_ROOT=$CACHE/containers/storage
BUILDAH_RUNROOT=/run/fleetward-buildah
IMAGE_DIR=$CACHE/images
DEBIAN_MIRROR=${FLEETWARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${FLEETWARD_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Prometheus from its Go module (see devenv/images/prometheus/Dockerfile;
# the version is in devenv/common.sh).
PROMETHEUS_MODULE=github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION
# Alertmanager likewise (devenv/images/alertmanager/Dockerfile).
ALERTMANAGER_VERSION=0.35.0
ALERTMANAGER_MODULE=github.com/prometheus/alertmanager

# The project's images: name -> how to build them.
PRODUCT_IMAGES=(operator gateway ingestor encryptor billing mosquitto)
# The local stack's images (tag -> build directory under devenv/images).
LOCAL_IMAGES=(postgres:15 kafka:4.1.1 "prometheus:$PROMETHEUS_VERSION" "alertmanager:$ALERTMANAGER_VERSION"
  station-api:0.1.0)

# TMPDIR: buildah keeps RUN --mount=type=cache directories under it.
bah() {
  mkdir -p "$CACHE/containers/tmp"
  TMPDIR=$CACHE/containers/tmp buildah --root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver overlay "$@"
}

image_id() { bah images --noheading --no-trunc --format '{{.ID}}' "$1" 2>/dev/null | head -1; }

# build_image <tag> <context> [buildah bud args...]: layers are cached, so
# an unchanged Dockerfile and context cost a few seconds.
build_image() {
  local tag=$1 context=$2
  shift 2
  log "building image $tag"
  BUILDAH_ISOLATION=chroot bah bud --quiet --layers --network host --pull-never \
    -t "$tag" "$@" "$context" >"$STATE/logs/image-build.log" 2>&1 ||
    die "building $tag failed: $(tail -20 "$STATE/logs/image-build.log")"
}

build_base_image() {
  [ -n "$(image_id "$BASE_IMAGE")" ] && return 0
  local tar=$IMAGE_DIR/debian-bookworm-slim.tar ctr
  rm -rf "$tar" "$tar.part"
  mkdir -p "$IMAGE_DIR"
  log "making $BASE_IMAGE from Debian packages (mmdebstrap)"
  # As the official image: merged /usr without the usrmerge package (which
  # would pull in Perl), and apt without its binary caches, languages or
  # leftover archives, so every `apt-get install` layer stays small.
  local clean='DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";'
  # shellcheck disable=SC2016 # "$1" in a hook is the chroot, expanded by mmdebstrap's shell.
  mmdebstrap --quiet --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --customize-hook="printf '%s\n' '$clean' >\"\$1/etc/apt/apt.conf.d/docker-clean\"" \
    --customize-hook="echo 'Acquire::Languages \"none\";' >\"\$1/etc/apt/apt.conf.d/docker-no-languages\"" \
    --customize-hook="echo 'APT::AutoRemove::SuggestsImportant \"false\";' >\"\$1/etc/apt/apt.conf.d/docker-autoremove-suggests\"" \
    --customize-hook='rm -f "$1"/var/cache/apt/*.bin' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    bookworm "$tar.part" \
    "deb $DEBIAN_MIRROR bookworm main" \
    "deb $DEBIAN_MIRROR bookworm-updates main" \
    "deb $DEBIAN_SECURITY_MIRROR bookworm-security main" >"$STATE/logs/mmdebstrap.log" 2>&1 ||
    die "mmdebstrap failed (see $STATE/logs/mmdebstrap.log)"
  mv "$tar.part" "$tar"
  ctr=$(bah from scratch)
  bah add --quiet "$ctr" "$tar" / >/dev/null
  bah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  bah commit --quiet "$ctr" "$BASE_IMAGE" >/dev/null
  bah rm "$ctr" >/dev/null
  rm -f "$tar"
}

build_node_images() {
  build_base_image
  local ctx=$IMAGE_DIR/context
  rm -rf "$ctx" && mkdir -p "$ctx/pause" "$ctx/coredns"
  cp /usr/bin/catatonit "$ctx/pause/catatonit"
  # shellcheck disable=SC2153 # PAUSE_IMAGE is set by devenv/node.sh, sourced before this file.
  build_image "$PAUSE_IMAGE" "$ctx/pause" -f "$ROOT/devenv/images/pause/Dockerfile"
  cp "$CACHE/bin/coredns" "$ctx/coredns/coredns"
  build_image "$COREDNS_IMAGE" "$ctx/coredns" -f "$ROOT/devenv/images/coredns/Dockerfile"
  rm -rf "$ctx"
}

# Kubernetes discovery only: the one the chart's scrape configuration uses.
build_prometheus() {
  CGO_ENABLED=0 go_install_once prometheus "$PROMETHEUS_VERSION" \
    -ldflags="-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    -tags remove_all_sd,enable_kubernetes_sd "$PROMETHEUS_MODULE"
}

# Its module ships the web UI's sources, not the built assets it embeds
# (a JavaScript and Elm build); the build gets a one-page stand-in for them,
# so the server builds unchanged: the API (/api/v2) is all the stack uses.
build_alertmanager() {
  [ -x "$CACHE/bin/alertmanager" ] && [ -f "$CACHE/bin/.alertmanager-$ALERTMANAGER_VERSION" ] && return 0
  log "building Alertmanager $ALERTMANAGER_VERSION from the Go module proxy (API only, no web UI)"
  local src work=$CACHE/alertmanager-src
  src=$(go mod download -json "$ALERTMANAGER_MODULE@v$ALERTMANAGER_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || die "could not download $ALERTMANAGER_MODULE@v$ALERTMANAGER_VERSION"
  rm -rf "$work" && cp -r "$src" "$work" && chmod -R u+w "$work"
  local ui
  for ui in elm mantine; do
    mkdir -p "$work/ui/app/dist/$ui"
    echo '<p>Alertmanager built without its web UI: see /api/v2/alerts</p>' >"$work/ui/app/dist/$ui/index.html"
  done
  mkdir -p "$CACHE/bin"
  (cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$CACHE/bin/alertmanager" \
    -ldflags="-s -w -X github.com/prometheus/common/version.Version=$ALERTMANAGER_VERSION" ./cmd/alertmanager) ||
    die "Alertmanager build failed"
  rm -rf "$work"
  rm -f "$CACHE"/bin/.alertmanager-*
  touch "$CACHE/bin/.alertmanager-$ALERTMANAGER_VERSION"
}

# The local stack's stand-ins for public images (once per run: the
# prebuilt path below makes them while the workspace compiles).
build_local_images() {
  [ -z "${LOCAL_IMAGES_BUILT:-}" ] || return 0
  build_base_image
  local ctx=$IMAGE_DIR/context item name
  for item in "${LOCAL_IMAGES[@]}"; do
    name=${item%%:*}
    case $name in
      kafka)
        fetch_kafka
        rm -rf "$ctx" && mkdir -p "$ctx"
        cp -r "$CACHE/kafka/libs" "$ctx/libs"
        rm -f "$ctx"/libs/.stamp-*
        cp "$ROOT/devenv/kafka/log4j2.properties" "$ROOT/devenv/images/kafka/entrypoint.sh" "$ctx/"
        build_image "localhost/fleetward/$item" "$ctx" -f "$ROOT/devenv/images/kafka/Dockerfile"
        rm -rf "$ctx"
        ;;
      prometheus)
        build_prometheus
        rm -rf "$ctx" && mkdir -p "$ctx"
        cp "$CACHE/bin/prometheus" "$ctx/"
        build_image "localhost/fleetward/$item" "$ctx" -f "$ROOT/devenv/images/prometheus/Dockerfile"
        rm -rf "$ctx"
        ;;
      alertmanager)
        build_alertmanager
        rm -rf "$ctx" && mkdir -p "$ctx"
        cp "$CACHE/bin/alertmanager" "$ctx/"
        build_image "localhost/fleetward/$item" "$ctx" -f "$ROOT/devenv/images/alertmanager/Dockerfile"
        rm -rf "$ctx"
        ;;
      station-api)
        build_image "localhost/fleetward/$item" "$ROOT/testdata/stations" -f "$ROOT/devenv/images/station-api/Dockerfile"
        ;;
      *) build_image "localhost/fleetward/$item" "$ROOT/devenv/images/$name" ;;
    esac
  done
  LOCAL_IMAGES_BUILT=1
}

# The project's images, from the same Dockerfiles a user builds with
# `docker build`. Their binaries come from one of two places
# (FLEETWARD_IMAGE_BINARIES):
#   prebuilt  (the default on a host whose glibc the images' Debian
#             bookworm base has, 2.36 or older): `cargo build --release` on
#             this machine, its binaries copied into a small build context
#             (out/) and the Dockerfile built with BINARIES=prebuilt, which
#             skips its build stage. With FLEETWARD_BUILD_TESTS=1 the same
#             release build compiles every test too (`./deploy.sh test`
#             then runs them without compiling the workspace again).
#   build     the Dockerfile's build stage compiles the workspace in
#             release inside the build (as release.yml and minikube do), in
#             a stand-in for the public Rust image with this machine's
#             toolchain mounted; its cache mounts keep target/ and the crate
#             registry under $CACHE.
RUST_BUILDER_IMAGE=localhost/fleetward/rust-builder:bookworm
# The build stage fetches crates over HTTPS with this machine's trust store,
# which may hold a CA (e.g. a proxy's) that Debian's bundle lacks; only the
# builder stand-in gets it, never an image that ships.
HOST_CA_BUNDLE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
# The Dockerfile's targets, the packages that make their binaries, and the
# binaries (as in the Dockerfile's build stage).
RUST_IMAGES=(operator gateway ingestor encryptor billing)
RUST_PACKAGES=(fleetward-operator fleetward-gateway fleetward-ingestor fleetward-encryptor fleetward-billing)
RUST_BINARIES=(fleetward-operator crdgen fleetward-gateway fleetward-ingestor fleetward-encryptor fleetward-stations
  fleetward-billing)
# Tools for the user of the local stack, built with the images' binaries
# and put in $CACHE/bin (`. .dev/env` adds it to the PATH).
RUST_TOOLS=(fleetward-simulator)
TOOL_BINARIES=(fleetward-sim)
# The newest glibc the images' base (Debian bookworm) has: a binary linked
# against a newer one would not start in the image.
BASE_GLIBC=2.36

# version_le A B: A <= B for dotted versions.
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }

# image_binaries_mode: prebuilt or build (see above), in IMAGE_BINARIES.
image_binaries_mode() {
  local glibc
  IMAGE_BINARIES=${FLEETWARD_IMAGE_BINARIES:-}
  case $IMAGE_BINARIES in
    prebuilt | build) return 0 ;;
    "") ;;
    *) die "FLEETWARD_IMAGE_BINARIES=$IMAGE_BINARIES: use prebuilt or build" ;;
  esac
  glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc //p')
  if [ -n "$glibc" ] && version_le "$glibc" "$BASE_GLIBC"; then
    IMAGE_BINARIES=prebuilt
  else
    log "this host's glibc (${glibc:-unknown}) is newer than the images' ($BASE_GLIBC): they compile their own binaries"
    IMAGE_BINARIES=build
  fi
}

# host_release_build <dir>: the release binaries, compiled here, copied to
# <dir>/out/; refuses a binary that needs a newer glibc than the base's.
# kill_tree <pid>: the process and everything it started (a build's
# subshells, cargo and its rustc), children first.
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do kill_tree "$child"; done
  kill "$1" 2>/dev/null || true
}

host_release_build() {
  local out=$1/out target_dir=${CARGO_TARGET_DIR:-$ROOT/target} pkgs=() p b need
  for p in "${RUST_PACKAGES[@]}" "${RUST_TOOLS[@]}"; do pkgs+=(-p "$p"); done
  if [ "${FLEETWARD_BUILD_TESTS:-0}" = 1 ]; then
    # The binaries are this build's own: cargo builds every binary of a
    # package that has integration tests (they run them) and links it into
    # target/release/. A `cargo build --bins -p …` after it would compile
    # the workspace a second time: without the tests' dev-dependencies its
    # crates resolve other features, so nothing it needs is cached (8 of a
    # CI run's minutes went there).
    log "compiling the workspace in release, its tests included (the images' binaries and the test suite)"
    (cd "$ROOT" && cargo test --workspace --release --locked --no-run) || die "the release build failed"
  else
    log "release binaries for the images (cargo build --release ${pkgs[*]})"
    (cd "$ROOT" && cargo build --release --locked --bins "${pkgs[@]}") || die "the release build failed"
  fi
  mkdir -p "$out"
  for b in "${RUST_BINARIES[@]}"; do
    [ -x "$target_dir/release/$b" ] || die "the release build made no $target_dir/release/$b"
    need=$(objdump -T "$target_dir/release/$b" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
    version_le "${need:-0}" "$BASE_GLIBC" ||
      die "$b needs glibc $need, newer than the images' base ($BASE_GLIBC): build with FLEETWARD_IMAGE_BINARIES=build"
    cp "$target_dir/release/$b" "$out/$b"
  done
  mkdir -p "$CACHE/bin"
  for b in "${TOOL_BINARIES[@]}"; do
    [ -x "$target_dir/release/$b" ] || die "the release build made no $target_dir/release/$b"
    cp "$target_dir/release/$b" "$CACHE/bin/$b.tmp" && mv "$CACHE/bin/$b.tmp" "$CACHE/bin/$b"
  done
}

# wait_release_build <pid> <log>: waits for the background release build,
# saying every 30 s how far it got (a first build takes many minutes), and
# returns its exit status. `./deploy.sh test` starts the same build earlier
# (FLEETWARD_EARLY_BUILD_LOG): this one waits on cargo's lock meanwhile, and
# the progress is that build's.
wait_release_build() {
  local pid=$1 logs=("$2") total n last waited=0
  [ -f "${FLEETWARD_EARLY_BUILD_LOG:-}" ] && logs=("$FLEETWARD_EARLY_BUILD_LOG" "$2")
  total=$(grep -c '^\[\[package\]\]' "$ROOT/Cargo.lock")
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if ((waited % 30 == 0)); then
      n=$(cat "${logs[@]}" | grep -ac '^ *Compiling ' || true)
      last=$(cat "${logs[@]}" | grep -a '^ *Compiling ' | tail -n 1 | awk '{print $2}' || true)
      log "release build: $n crates compiled (Cargo.lock lists $total; a first build compiles most), now ${last:-resolving}"
    fi
  done
  wait "$pid"
}

build_product_images() {
  local ctx=$IMAGE_DIR/product target
  image_binaries_mode
  if [ "$IMAGE_BINARIES" = prebuilt ]; then
    # The release build runs in the background while the images that need
    # no Rust binary are made: those wait mostly on the network (mmdebstrap,
    # apt-get in their Dockerfiles), the build on the CPU.
    local build_log=$STATE/logs/release-build.log build_pid
    rm -rf "$ctx" && mkdir -p "$ctx"
    log "compiling the workspace in release (log: $build_log) while the other images are made"
    host_release_build "$ctx" >"$build_log" 2>&1 &
    build_pid=$!
    # An image below that fails ends the script: the build goes with it
    # (left running, it would write into the next run's log).
    trap 'kill_tree $build_pid' EXIT
    build_base_image
    build_image "$IMAGE_REGISTRY/mosquitto:$FLEETWARD_VERSION" "$ROOT/workloads/mosquitto"
    build_local_images
    if ! wait_release_build "$build_pid" "$build_log"; then
      tail -n 60 "$build_log" >&2
      die "the release build failed (its whole log: $build_log)"
    fi
    trap - EXIT
    cat "$build_log" >&2
    for target in "${RUST_IMAGES[@]}"; do
      build_image "$IMAGE_REGISTRY/$target:$FLEETWARD_VERSION" "$ctx" -f "$ROOT/Dockerfile" --target "$target" \
        --build-arg BINARIES=prebuilt
    done
    rm -rf "$ctx"
  else
    build_base_image
    ctx=$IMAGE_DIR/context
    rm -rf "$ctx" && mkdir -p "$ctx"
    cp "$ROOT/devenv/images/rust-builder/Dockerfile" "$HOST_CA_BUNDLE" "$ctx/"
    build_image "$RUST_BUILDER_IMAGE" "$ctx" --build-arg "CA_BUNDLE=$(basename "$HOST_CA_BUNDLE")"
    rm -rf "$ctx"
    local rustup_home=${RUSTUP_HOME:-$HOME/.rustup} cargo_bin
    cargo_bin=$(dirname "$(command -v cargo)")
    for target in "${RUST_IMAGES[@]}"; do
      build_image "$IMAGE_REGISTRY/$target:$FLEETWARD_VERSION" "$ROOT" -f "$ROOT/Dockerfile" --target "$target" \
        --build-arg "RUST_IMAGE=$RUST_BUILDER_IMAGE" \
        --volume "$rustup_home:/usr/local/rustup:ro" --volume "$cargo_bin:/usr/local/cargo/bin:ro"
    done
    build_image "$IMAGE_REGISTRY/mosquitto:$FLEETWARD_VERSION" "$ROOT/workloads/mosquitto"
  fi
}

# all_images: what the chart needs, for the node (or minikube).
all_image_tags() {
  local t
  for t in "${PRODUCT_IMAGES[@]}"; do echo "$IMAGE_REGISTRY/$t:$FLEETWARD_VERSION"; done
  for t in "${LOCAL_IMAGES[@]}"; do echo "localhost/fleetward/$t"; done
}

# load_image <tag> <target: node|minikube>: exports the image once per build
# (the stamp holds the image id last loaded) and imports it.
load_image() {
  local tag=$1 target=$2 id stamp archive
  id=$(image_id "$tag")
  [ -n "$id" ] || die "image $tag was not built"
  stamp=$IMAGE_DIR/loaded-$target/$(printf '%s' "$tag" | tr '/:' '__')
  if [ "$target" = node ] && [ "$(cat "$stamp" 2>/dev/null)" = "$id" ] &&
    ctr_node images ls -q "name==$(normalise_ref "$tag")" | grep -q .; then
    return 0
  fi
  mkdir -p "$(dirname "$stamp")"
  archive=$IMAGE_DIR/$(printf '%s' "$tag" | tr '/:' '__').tar
  rm -f "$archive"
  bah push --quiet "$tag" "docker-archive:$archive:$tag" >/dev/null || die "exporting $tag failed"
  case $target in
    node) ctr_node images import --no-unpack=false "$archive" >/dev/null || die "importing $tag into containerd failed" ;;
    minikube) minikube image load "$archive" || die "loading $tag into minikube failed" ;;
  esac
  rm -f "$archive"
  echo "$id" >"$stamp"
}

# containerd names docker.io images in full.
normalise_ref() {
  case $1 in
    */*.*/* | localhost/* | *.*/*) echo "$1" ;;
    */*) echo "docker.io/$1" ;;
    *) echo "docker.io/library/$1" ;;
  esac
}

load_node_images() {
  build_node_images
  load_image "$PAUSE_IMAGE" node
  load_image "$COREDNS_IMAGE" node
}

# image_sizes: one line per image, for the README and the CI log.
image_sizes() {
  local t
  for t in "$BASE_IMAGE" "$PAUSE_IMAGE" "$COREDNS_IMAGE" $(all_image_tags); do
    bah images --noheading --format '{{.Name}}:{{.Tag}} {{.Size}}' "$t" 2>/dev/null | head -1
  done
}
