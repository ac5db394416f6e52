# shellcheck shell=bash
# What the devenv scripts share; sourced by dev.sh, aws.sh, lint.sh and
# terraform-check.sh. Builtins only (aws.sh's --plan runs with an empty PATH).

log() { TZ=UTC printf '==> %(%H:%M:%S)T %s\n' -1 "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Prometheus: the local stack's server (devenv/images.sh) and the rules'
# promtool (devenv/lint.sh) come from this module version (v0.316.0 is
# Prometheus 3.16.0).
# shellcheck disable=SC2034 # used by the scripts that source this file
PROMETHEUS_VERSION=3.16.0
# shellcheck disable=SC2034
PROMETHEUS_MODULE_VERSION=v0.316.0

# Go may live outside the PATH (/usr/local/go/bin on a fresh machine).
go_cmd() {
  if command -v go >/dev/null 2>&1; then
    go "$@"
  elif [ -x /usr/local/go/bin/go ]; then
    /usr/local/go/bin/go "$@"
  else
    die "missing 'go': install Go (https://go.dev/dl) or the Debian package golang-go"
  fi
}

# go_install_once <binary> <version> <go install arguments…>: builds
# $CACHE/bin/<binary> from the Go module proxy, once per version (a stamp
# file beside it says which version it is). The caller's environment
# (CGO_ENABLED=0 …) applies to the build.
go_install_once() {
  local bin=$1 version=$2
  shift 2
  [ -x "$CACHE/bin/$bin" ] && [ -f "$CACHE/bin/.$bin-$version" ] && return 0
  log "building $bin $version from the Go module proxy"
  mkdir -p "$CACHE/bin"
  GOBIN=$CACHE/bin go_cmd install -trimpath "$@" || die "$bin build failed"
  rm -f "$CACHE/bin/.$bin-"*
  touch "$CACHE/bin/.$bin-$version"
}
