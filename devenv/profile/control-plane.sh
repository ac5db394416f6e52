#!/usr/bin/env bash
# Where the control plane's CPU goes while something runs against it (the
# device benchmark, the e2e): samples every process for SECONDS with perf,
# then prints each process's share of the two cores and, inside the
# kube-apiserver + etcd process (`fleetward-cp apiserver`), the share per
# request kind (patch/create/watch of custom resources, Secrets, Events),
# etcd and the Go garbage collector.
#
#   devenv/profile/control-plane.sh [SECONDS]     (default 20)
#
# Run it while the load is on, e.g. in a second shell once the device
# benchmark prints "ready 1000/10000". Needs perf (Debian: linux-perf).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"
seconds=${1:-20}
case $seconds in '' | *[!0-9]*) die "SECONDS must be a number, got '$seconds'" ;; esac
command -v perf >/dev/null || die "perf is missing: install the Debian package linux-perf"
command -v python3 >/dev/null || die "python3 is missing"
pgrep -f 'fleetward-cp apiserver' >/dev/null || die "no control plane runs: ./deploy.sh dev-up first"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
log "sampling every CPU for ${seconds}s"
perf record -a -g -F 199 -o "$out/perf.data" -- sleep "$seconds" 2>"$out/record.log" ||
  { cat "$out/record.log" >&2; die "perf record failed (perf_event_paranoid? run as root)"; }
perf script -i "$out/perf.data" -F comm,pid,tid,ip,sym 2>/dev/null >"$out/stacks.txt"
python3 "$ROOT/devenv/profile/categorize.py" "$out/stacks.txt" "$seconds" 199
