#!/usr/bin/env bash
# Static checks of the repository's scripts and workflows:
#   1. actionlint on .github/workflows (with shellcheck on the PATH it also
#      checks every `run:` block);
#   2. shellcheck on every shell script: *.sh, and files whose first line
#      names bash or sh (deploy.sh, .ci/run, …), outside .git, .cache, .dev
#      and target*;
#   3. the chart's alert rules: `promtool check rules` and `promtool test
#      rules` (every rule's cases in helm/fleetward/alerts/*.test.yaml);
#   4. the chart's README is what helm-docs generates from values.yaml (its
#      `# --` comments) and README.md.gotmpl.
#
#   devenv/lint.sh
#   devenv/lint.sh chart-readme     (re)generates helm/fleetward/README.md
#
# actionlint, promtool and helm-docs are built once from the Go module proxy into
# .cache/bin (pinned, with a version stamp, as devenv/dev.sh builds helm);
# the Debian package provides shellcheck, installed when running as root
# with apt-get.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETWARD_CACHE_DIR:-$ROOT/.cache}
ACTIONLINT_VERSION=v1.7.12
HELM_DOCS_VERSION=v1.14.2

# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"

build_actionlint() {
  go_install_once actionlint "$ACTIONLINT_VERSION" -ldflags="-s -w" \
    "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
}

build_promtool() {
  CGO_ENABLED=0 go_install_once promtool "$PROMETHEUS_VERSION" \
    -ldflags="-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION"
}

build_helm_docs() {
  CGO_ENABLED=0 go_install_once helm-docs "$HELM_DOCS_VERSION" -ldflags="-s -w" \
    "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION"
}

# The chart's README as helm-docs makes it, on stdout.
chart_readme() {
  "$CACHE/bin/helm-docs" --dry-run --log-level warning --chart-search-root helm/fleetward \
    --template-files README.md.gotmpl
}

need_shellcheck() {
  command -v shellcheck >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing shellcheck"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null; } ||
      die "could not install shellcheck; install it and retry"
  else
    die "missing 'shellcheck': install the Debian package 'shellcheck'"
  fi
}

# Paths relative to the root, one a line, sorted.
shell_scripts() {
  local f
  find . \( -name .git -o -name .cache -o -name .dev -o -name 'target*' -o -name node_modules \) -prune -o \
    -type f -print | sort | while IFS= read -r f; do
    if [[ $f == *.sh ]] || head -n1 "$f" 2>/dev/null | grep -Eq '^#!(.*[/ ])?(ba|da)?sh([[:space:]]|$)'; then
      echo "${f#./}"
    fi
  done
}

main() {
  cd "$ROOT"
  if [ "${1:-}" = chart-readme ]; then
    build_helm_docs
    chart_readme >helm/fleetward/README.md
    log "wrote helm/fleetward/README.md"
    return
  fi
  need_shellcheck
  build_actionlint
  build_promtool
  build_helm_docs
  local status=0 scripts=()
  log "actionlint .github/workflows ($("$CACHE/bin/actionlint" -version | head -1), $(shellcheck --version | sed -n 's/^version: /shellcheck /p'))"
  "$CACHE/bin/actionlint" -no-color || status=1
  mapfile -t scripts < <(shell_scripts)
  log "shellcheck ${scripts[*]}"
  # -x: follow `source`s (paths relative to the root, as the scripts name them).
  shellcheck -x "${scripts[@]}" || status=1
  local rules=helm/fleetward/alerts/fleetward.rules.yaml
  log "promtool check rules $rules; promtool test rules ${rules%.yaml}.test.yaml"
  "$CACHE/bin/promtool" check rules "$rules" || status=1
  "$CACHE/bin/promtool" test rules "${rules%.yaml}.test.yaml" || status=1
  log "helm-docs: helm/fleetward/README.md from values.yaml"
  if ! chart_readme | diff -u helm/fleetward/README.md - >&2; then
    echo "helm/fleetward/README.md is not what values.yaml and README.md.gotmpl generate (diff above):" \
      "run devenv/lint.sh chart-readme and commit it" >&2
    status=1
  fi
  [ "$status" = 0 ] || die "lint found problems (above)"
  log "lint clean: ${#scripts[@]} shell scripts, $(find .github/workflows -name '*.yml' | wc -l) workflows," \
    "$(grep -c '^ *- alert:' "$rules") alert rules"
}

main "$@"
