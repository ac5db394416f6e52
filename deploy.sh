#!/usr/bin/env bash
# fleetward deployment entry point.
#
#   ./deploy.sh dev-up      local services without Docker (kube-apiserver, PostgreSQL,
#                           Kafka, Mosquitto) + CRDs + operator + examples/
#   ./deploy.sh dev-down    stop what dev-up started
#   ./deploy.sh test        start the services if needed and run the whole test suite
#   ./deploy.sh bench-devices [N]   apply N Devices, time until all are Ready
#
# Cluster targets (minikube, AWS) arrive with the Helm chart and Terraform.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
DEV="$ROOT/devenv/dev.sh"

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  dev-up) "$DEV" up "$@" ;;
  dev-down) "$DEV" down ;;
  dev-status) "$DEV" status ;;
  test)
    "$DEV" up --no-operator
    # The tests run their own operator from this build; a dev operator
    # reconciling the same objects would race with it.
    "$DEV" stop-operator
    # shellcheck disable=SC1090
    . "$("$DEV" env)"
    cd "$ROOT"
    cargo test --workspace --no-fail-fast "$@"
    ;;
  bench-devices)
    "$DEV" up --no-operator
    "$DEV" stop-operator
    # shellcheck disable=SC1090
    . "$("$DEV" env)"
    cd "$ROOT"
    cargo bench -p fleetward-operator --bench devices -- "$@"
    ;;
  -h | --help | help | "") usage 0 ;;
  *) echo "unknown command: $cmd" >&2; usage 1 ;;
esac
