#!/usr/bin/env bash
# Static checks of terraform/ (the AWS path), without an AWS account and
# without provider downloads:
#   1. `tofu fmt -check`: every .tf file is in canonical form;
#   2. checkov: the security policy checks of the Terraform framework;
#      any failed check fails the script (a check we decide not to meet is
#      skipped on its resource with `#checkov:skip=CKV_…: reason`).
#
#   devenv/terraform-check.sh [dir]     both stages on dir (default: terraform)
#
# Tools are built/installed once into .cache/ (git-ignored) and reused, so a
# second run needs no network:
#   - OpenTofu from the Go module proxy. Its go.mod has a replace directive
#     (OpenTofu's fork of hashicorp/hcl), which `go install pkg@version`
#     refuses, so it is built from a throwaway main module in .cache that
#     requires opentofu and repeats its replace directives.
#   - checkov from PyPI in a venv of its own (.cache/venv-checkov): its many
#     exact dependency pins would clash with the test clients' venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETWARD_CACHE_DIR:-$ROOT/.cache}
TOFU_VERSION=v1.12.6
CHECKOV_VERSION=3.3.30
TF_DIR=${1:-terraform}

# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"

build_tofu() {
  local bin=$CACHE/bin/tofu stamp=$CACHE/bin/.tofu-$TOFU_VERSION
  [ -x "$bin" ] && [ -f "$stamp" ] && return 0
  log "building OpenTofu $TOFU_VERSION from the Go module proxy (first time: about 8 minutes on 2 cores)"
  local src=$CACHE/tofu-build module gomod
  rm -rf "$src"
  mkdir -p "$src" "$CACHE/bin"
  module=github.com/opentofu/opentofu
  gomod=$(cd "$src" && go_cmd mod download -json "$module@$TOFU_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || die "could not download $module@$TOFU_VERSION from the Go module proxy"
  {
    printf 'module fleetward.invalid/tofu-build\n\n'
    sed -n 's/^go \(.*\)$/go \1/p' "$gomod"
    printf '\nrequire %s %s\n\n' "$module" "$TOFU_VERSION"
    # Single-line replace directives and replace blocks, as upstream wrote them.
    sed -n '/^replace (/,/^)/p; /^replace [^(]/p' "$gomod"
  } >"$src/go.mod"
  (
    cd "$src" &&
      go_cmd get "$module/cmd/tofu@$TOFU_VERSION" &&
      go_cmd build -trimpath -ldflags="-s -w -X $module/version.dev=no" -o "$bin.tmp" "$module/cmd/tofu"
  ) || die "OpenTofu build failed"
  mv "$bin.tmp" "$bin"
  rm -f "$CACHE"/bin/.tofu-*
  touch "$stamp"
}

checkov_env() {
  local venv=$CACHE/venv-checkov stamp=$CACHE/venv-checkov/.stamp-checkov-$CHECKOV_VERSION
  [ -x "$venv/bin/checkov" ] && [ -f "$stamp" ] && return 0
  log "installing checkov $CHECKOV_VERSION from PyPI into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed: install the Debian package python3-venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION" || die "pip install checkov failed"
  touch "$stamp"
}

build_tofu
checkov_env
cd "$ROOT"
[ -d "$TF_DIR" ] || die "no directory $TF_DIR in $ROOT"

# fmt reads no CLI configuration; unset a TF_CLI_CONFIG_FILE that names a
# missing file, which tofu would otherwise warn about on every run.
if env -u TF_CLI_CONFIG_FILE "$CACHE/bin/tofu" fmt -check -recursive -diff "$TF_DIR"; then
  log "fmt: ok ($TF_DIR/ is formatted; tofu $TOFU_VERSION)"
else
  die "fmt: the files above differ from canonical form; run: .cache/bin/tofu fmt -recursive $TF_DIR"
fi

# --quiet: failed checks only; --compact: without their code blocks. No
# module downloads (terraform/ uses none) and no platform calls (no API
# key). checkov exits 1 when a check fails; its JSON report gives the
# counts. (With --quiet the report lists failures only, so the skips are
# listed from their comments.)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
"$CACHE/venv-checkov/bin/checkov" -d "$TF_DIR" --framework terraform \
  --quiet --compact --skip-download --download-external-modules false \
  --output cli --output json --output-file-path "console,$work/report.json" \
  >"$work/cli.txt" 2>"$work/stderr.txt" || status=$?
counts=$("$CACHE/venv-checkov/bin/python" - "$work/report.json" 2>/dev/null <<'EOF' || true
import json, sys
data = json.load(open(sys.argv[1]))
counts = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0}
for report in data if isinstance(data, list) else [data]:
    for key in counts:
        counts[key] += report.get("summary", {}).get(key, 0)
print(", ".join(f"{key.replace('_', ' ')} {n}" for key, n in counts.items()))
EOF
)
if [ "$status" -eq 0 ] && [[ $counts == *"failed 0,"*"parsing errors 0" ]]; then
  log "checkov: ok ($counts; checkov $CHECKOV_VERSION)"
  grep -rn --include='*.tf' '#checkov:skip=' "$TF_DIR" | sed 's/^/    /' >&2 || true
else
  cat "$work/cli.txt" >&2
  tail -20 "$work/stderr.txt" >&2
  die "checkov: ${counts:-no report} in $TF_DIR/ (exit $status); fix each failed check, or skip it on its resource with #checkov:skip=CKV_…: reason"
fi
