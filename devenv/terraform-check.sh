#!/usr/bin/env bash
# Static checks of terraform/ (the AWS path), without an AWS account and
# without provider downloads:
#   1. hclfmt -check: every .tf file is in canonical HCL form;
#   2. checkov: the security policy checks of the Terraform framework;
#      any failed check fails the script (a check we decide not to meet is
#      skipped on its resource with `#checkov:skip=CKV_…: reason`);
#   3. the provider lock file: every provider of versions.tf is pinned in
#      .terraform.lock.hcl under the same constraint, with the release
#      checksums of every platform (zh:), so `terraform init` installs only
#      the build the lock names.
#
#   devenv/terraform-check.sh [dir]     both stages on dir (default: terraform)
#
# Tools are built/installed once into .cache/ (git-ignored) and reused, so a
# second run needs no network:
#   - hclfmt (github.com/hashicorp/hcl/v2/cmd/hclfmt) from the Go module
#     proxy: HCL's own formatter, the hclwrite.Format that `terraform fmt`
#     and `tofu fmt` call after their own rewrites (they also unwrap
#     "${var.x}" written alone, which this check does not catch). A file
#     `terraform fmt` leaves as it is passes; hclfmt builds in seconds where
#     OpenTofu took 6 minutes of a cold CI run.
#   - checkov from PyPI in a venv of its own (.cache/venv-checkov): its many
#     exact dependency pins would clash with the test clients' venv.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETWARD_CACHE_DIR:-$ROOT/.cache}
HCL_VERSION=v2.24.0
CHECKOV_VERSION=3.3.30
TF_DIR=${1:-terraform}

# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"

# hclfmt is hashicorp/hcl's formatter, at that module's version.
build_hclfmt() {
  go_install_once hclfmt "$HCL_VERSION" -ldflags="-s -w" "github.com/hashicorp/hcl/v2/cmd/hclfmt@$HCL_VERSION"
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

build_hclfmt
checkov_env
cd "$ROOT"
[ -d "$TF_DIR" ] || die "no directory $TF_DIR in $ROOT"

# hclfmt takes files, not directories, and prints a file in canonical form
# (it fails on a syntax error); any difference is shown as a diff.
mapfile -t tf_files < <(find "$TF_DIR" -name '*.tf' -not -path '*/.terraform/*' | sort)
[ ${#tf_files[@]} -gt 0 ] || die "no .tf files in $TF_DIR"
unformatted=()
for f in "${tf_files[@]}"; do
  "$CACHE/bin/hclfmt" "$f" | diff -u --label "$f" --label "$f (canonical)" "$f" - >&2 || unformatted+=("$f")
done
if [ ${#unformatted[@]} -eq 0 ]; then
  log "fmt: ok (${#tf_files[@]} files in $TF_DIR/ are in canonical form; hclfmt, hcl $HCL_VERSION)"
else
  die "fmt: ${unformatted[*]} differ from canonical form (diffs above); run: .cache/bin/hclfmt -w FILE, or terraform fmt -recursive $TF_DIR"
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

# The lock file and versions.tf agree: each required provider is locked at
# one version under the constraint versions.tf states, with checksums.
python3 - "$TF_DIR" <<'EOF' || die "lock: $TF_DIR/.terraform.lock.hcl does not match versions.tf (above); run: terraform -chdir=$TF_DIR init -upgrade, then terraform -chdir=$TF_DIR providers lock -platform=linux_amd64 -platform=linux_arm64 -platform=darwin_arm64 -platform=windows_amd64"
import pathlib, re, sys
d = pathlib.Path(sys.argv[1])
versions = (d / "versions.tf").read_text()
lock_path = d / ".terraform.lock.hcl"
if not lock_path.exists():
    sys.exit(f"no {lock_path}")
lock = lock_path.read_text()
required = re.findall(r'source\s*=\s*"([^"]+)"\s*\n\s*version\s*=\s*"([^"]+)"', versions)
if not required:
    sys.exit("versions.tf names no provider source and version")
for source, constraint in required:
    address = source if source.count("/") == 2 else f"registry.terraform.io/{source}"
    block = re.search(r'provider "' + re.escape(address) + r'" \{(.*?)\n\}', lock, re.S)
    if not block:
        sys.exit(f"{address} is not in the lock file")
    body = block.group(1)
    version = re.search(r'version\s*=\s*"([^"]+)"', body)
    locked = re.search(r'constraints\s*=\s*"([^"]+)"', body)
    zh = re.findall(r'"zh:[0-9a-f]{64}"', body)
    if not version or not locked or locked.group(1) != constraint:
        sys.exit(f"{address}: locked under {locked.group(1) if locked else None!r}, versions.tf says {constraint!r}")
    if len(zh) < 4:
        sys.exit(f"{address}: {len(zh)} release checksums (zh:), one per platform expected")
    print(f"lock: ok ({address} {version.group(1)} under {constraint!r}, {len(zh)} release checksums)", file=sys.stderr)
EOF
