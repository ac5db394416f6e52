#!/usr/bin/env bash
# fleetward deployment entry point.
#
#   ./deploy.sh local-up     the whole stack on minikube (when `minikube` is on the
#                            PATH) or on this machine's own one-node cluster:
#                            images built here, `helm install`, examples/ applied
#   ./deploy.sh local-down   remove what local-up made
#   ./deploy.sh dev-up       local-up on the built-in node, plus PostgreSQL and
#                            Kafka on loopback for the fast integration tests
#   ./deploy.sh dev-down     stop what dev-up started
#   ./deploy.sh test         start what the tests need and run the whole test suite
#   ./deploy.sh images       build every image and report its size
#   ./deploy.sh bench-devices [N]   apply N Devices, time until all are Ready
#   ./deploy.sh aws-up [region]     terraform/ applied (EKS, RDS, ECR, IAM), images
#                            pushed to ECR, the chart installed (default eu-west-1)
#   ./deploy.sh aws-down [region]   the fleet, the release, then terraform destroy
#
#   --plan (aws-up, aws-down): print every step and command, run none of them
#   --yes  (aws-up, aws-down): terraform applies or destroys without asking
set -euo pipefail
# Builtins only: `aws-up --plan` runs with nothing but bash on the PATH.
ROOT=$(cd -- "${BASH_SOURCE[0]%/*}" 2>/dev/null && pwd) || ROOT=$PWD
DEV="$ROOT/devenv/dev.sh"

usage() {
  sed -n '2,/^[^#]/p' "$0" | sed -n 's/^# \{0,1\}//p'
  exit "${1:-0}"
}

# --plan may come anywhere; it belongs to the AWS commands.
args=()
plan=0
for arg in "$@"; do
  if [ "$arg" = --plan ]; then plan=1; else args+=("$arg"); fi
done
set -- ${args[@]+"${args[@]}"}
cmd=${1:-}
[ $# -gt 0 ] && shift
if [ "$plan" = 1 ]; then
  case "$cmd" in
    aws-up | aws-down) set -- "$@" --plan ;;
    *) echo "--plan applies to aws-up and aws-down only" >&2; exit 1 ;;
  esac
fi
case "$cmd" in
  local-up)
    if command -v minikube >/dev/null 2>&1; then
      "$DEV" minikube-up
    else
      "$DEV" up --no-test-services
    fi
    ;;
  local-down)
    if command -v minikube >/dev/null 2>&1; then
      "$DEV" minikube-down
    else
      "$DEV" stack-down
      "$DEV" down
    fi
    ;;
  dev-up) "$DEV" up "$@" ;;
  dev-down) "$DEV" down ;;
  dev-status) "$DEV" status ;;
  images) "$DEV" images node ;;
  test)
    # Each stage's time is printed at the end (CI's log reads them).
    t0=$SECONDS
    # The end-to-end test installs the chart itself; it needs every image.
    # One release build of the workspace serves both: the images take its
    # binaries (devenv/images.sh), and it compiles every test as well. It
    # needs no service, so it starts now, in the background and niced: it
    # takes the CPU that the services' start-up leaves (downloads, waits);
    # the images stage's own cargo waits for it on cargo's lock and finds
    # nothing left to do (or shows the error).
    mkdir -p "$ROOT/.dev/logs"
    (cd "$ROOT" && exec nice -n 10 cargo test --workspace --release --locked --no-run) \
      >"$ROOT/.dev/logs/release-build-early.log" 2>&1 &
    early_build=$!
    trap 'kill "$early_build" 2>/dev/null || true' EXIT
    "$DEV" up --no-stack
    t1=$SECONDS
    FLEETWARD_BUILD_TESTS=1 FLEETWARD_EARLY_BUILD_LOG="$ROOT/.dev/logs/release-build-early.log" "$DEV" images node
    wait "$early_build" || true
    trap - EXIT
    t2=$SECONDS
    # The tests run their own operators from this build; the dev stack's
    # operator reconciling the same kinds would race with them.
    "$DEV" pause-stack-operator
    trap '"$DEV" resume-stack-operator || true' EXIT
    # shellcheck disable=SC1090
    . "$("$DEV" env)"
    cd "$ROOT"
    rm -f .dev/e2e-figures.txt
    status=0
    cargo test --workspace --release --no-fail-fast "$@" || status=$?
    if [ -f .dev/e2e-figures.txt ]; then
      echo "== end-to-end figures (system-tests/tests/stack/)"
      cat .dev/e2e-figures.txt
    fi
    echo "== stages: services and node $((t1 - t0)) s (the release build started with them), release build and images $((t2 - t1)) s, tests $((SECONDS - t2)) s"
    exit "$status"
    ;;
  bench-devices)
    "$DEV" up --no-stack
    # The bench's Gateway runs its pod (Mosquitto and the gateway watching
    # its keys shards) on the node: it needs the images.
    "$DEV" images node
    "$DEV" pause-stack-operator
    trap '"$DEV" resume-stack-operator || true' EXIT
    # shellcheck disable=SC1090
    . "$("$DEV" env)"
    cd "$ROOT"
    cargo bench -p fleetward-operator --bench devices -- "$@"
    ;;
  aws-up) exec "$ROOT/devenv/aws.sh" up "$@" ;;
  aws-down) exec "$ROOT/devenv/aws.sh" down "$@" ;;
  -h | --help | help | "") usage 0 ;;
  *) echo "unknown command: $cmd" >&2; usage 1 ;;
esac
