# shellcheck shell=bash
# The whole fleetward stack on a cluster, sourced by devenv/dev.sh and
# deploy.sh: every image, `helm upgrade --install` of the chart with the
# local values (in-cluster PostgreSQL, Kafka and Prometheus, and a stand-in
# for the station API), then examples/ applied and waited for.

STACK_NS=${FLEETWARD_STACK_NAMESPACE:-fleet-demo}
STACK_RELEASE=${FLEETWARD_STACK_RELEASE:-fleetward}
LOCAL_VALUES=$ROOT/devenv/values-local.yaml

helm_cmd() { "$CACHE/bin/helm" "$@"; }

build_all_images() {
  build_product_images
  build_local_images
}

load_all_images() {
  local target=$1 tag
  log "loading images into the $target"
  for tag in $(all_image_tags); do
    load_image "$tag" "$target"
  done
}

stack_up() {
  local target=$1
  log "installing the chart: release $STACK_RELEASE in namespace $STACK_NS (first start takes a few minutes)"
  # --take-ownership: the CRDs are the chart's templates, and the tests
  # (or an older chart's crds/ folder) may have applied them before.
  helm_cmd upgrade --install "$STACK_RELEASE" "$ROOT/helm/fleetward" --namespace "$STACK_NS" --create-namespace \
    -f "$LOCAL_VALUES" --take-ownership --wait --timeout 10m >"$STATE/logs/helm.log" 2>&1 ||
    die "helm install failed: $(tail -5 "$STATE/logs/helm.log"); kubectl -n $STACK_NS get pods"
  log "applying examples/"
  kubectl_cmd apply -f "$ROOT/examples/" >/dev/null || die "applying examples/ failed"
  local kind
  for kind in gateways devices stationfeeds; do
    kubectl_cmd -n "$STACK_NS" wait --for=condition=Ready "$kind" --all --timeout=180s >/dev/null ||
      die "the example $kind are not Ready: kubectl -n $STACK_NS describe $kind"
  done
  # The Tariffs once their meters' Gateway is Ready: each deploys its
  # billing workload (a pod per Tariff).
  log "applying examples/billing/"
  kubectl_cmd apply -f "$ROOT/examples/billing/" >/dev/null || die "applying examples/billing/ failed"
  kubectl_cmd -n "$STACK_NS" wait --for=condition=Ready tariffs --all --timeout=180s >/dev/null ||
    die "the example tariffs are not Ready: kubectl -n $STACK_NS describe tariffs"
  wait_for 300 "the example workloads' pods" stack_pods_ready
  if [ "$target" = node ]; then
    start_port_forward mqtt "$MQTT_PORT" svc/edge 8883
    start_port_forward command "$COMMAND_PORT" svc/edge-api 8443
  fi
}

stack_pods_ready() {
  ! kubectl_cmd -n "$STACK_NS" get pods --no-headers 2>/dev/null |
    awk '{split($2, r, "/"); if ($3 != "Running" || r[1] != r[2]) bad=1} END {exit !bad}'
}

stack_down() {
  stop_port_forwards
  if ! kubectl_cmd get --raw /readyz >/dev/null 2>&1; then
    log "the cluster is not running: nothing to uninstall (start it with ./deploy.sh dev-up to remove the stack)"
    return 0
  fi
  if [ -x "$CACHE/bin/helm" ] && helm_cmd status "$STACK_RELEASE" -n "$STACK_NS" >/dev/null 2>&1; then
    log "removing the fleet's resources and the release $STACK_RELEASE"
    # A test or bench may have left the operator paused: it must run to
    # release the resources' finalizers.
    resume_stack_operator
    # The resources first, while the operator runs: it revokes and cleans up
    # after them (finalizers); the release and its namespace after.
    kubectl_cmd -n "$STACK_NS" delete gateways.fleetward.io,devices.fleetward.io,stationfeeds.fleetward.io,tariffs.fleetward.io --all --wait=true --timeout=120s \
      >/dev/null || log "some resources were not deleted in time (kubectl -n $STACK_NS get gateways,devices)"
    helm_cmd uninstall "$STACK_RELEASE" -n "$STACK_NS" --wait --timeout 5m >/dev/null ||
      log "helm uninstall failed; see: helm -n $STACK_NS list"
    # StatefulSets leave their volume claims behind on purpose; local-down
    # removes everything local-up made.
    kubectl_cmd -n "$STACK_NS" delete pvc -l "app.kubernetes.io/instance=$STACK_RELEASE" --ignore-not-found >/dev/null
    kubectl_cmd delete namespace "$STACK_NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
    # Released volumes are reclaimed by the provisioner (their directories
    # deleted): wait for it, so nothing of the stack stays on disk.
    wait_for 120 "the stack's volumes reclaimed" no_volumes_of "$STACK_NS"
  fi
}

no_volumes_of() {
  ! kubectl_cmd get pv -o jsonpath='{range .items[*]}{.spec.claimRef.namespace}{"\n"}{end}' 2>/dev/null | grep -qx "$1"
}

# The dev stack's operator would race the tests' own operators for the
# same objects: `./deploy.sh test` and `bench-devices` scale it to zero
# while they run and back when they end (failed or not), as
# `resume_stack_operator` does; its replica count waits in $STATE.
# The stack operator's replica count; fails when it is not installed.
stack_operator_replicas() {
  kubectl_cmd -n "$STACK_NS" get deployment "$STACK_RELEASE-operator" -o jsonpath='{.spec.replicas}' 2>/dev/null
}

pause_stack_operator() {
  local replicas
  replicas=$(stack_operator_replicas) || return 0
  if [ "${replicas:-0}" -gt 0 ]; then
    echo "$replicas" >"$STATE/stack-operator-replicas"
  fi
  log "scaling the dev stack's operator to 0 while the tests run (restored when they end)"
  kubectl_cmd -n "$STACK_NS" scale deployment "$STACK_RELEASE-operator" --replicas=0 >/dev/null
}

# Brings a paused stack operator back (to the replicas it had, or the
# chart's) and waits for it: without it a Device's finalizer is never
# released, and deleting the stack's namespace hangs.
resume_stack_operator() {
  local replicas saved=$STATE/stack-operator-replicas
  replicas=$(stack_operator_replicas) || return 0
  [ "${replicas:-0}" -gt 0 ] && { rm -f "$saved"; return 0; }
  replicas=$(cat "$saved" 2>/dev/null || true)
  if [ -z "$replicas" ]; then
    replicas=$(helm_cmd get values "$STACK_RELEASE" -n "$STACK_NS" --all -o json 2>/dev/null |
      jq -r '.operator.replicas // 1' 2>/dev/null || echo 1)
  fi
  log "scaling the dev stack's operator back to $replicas"
  kubectl_cmd -n "$STACK_NS" scale deployment "$STACK_RELEASE-operator" --replicas="$replicas" >/dev/null
  kubectl_cmd -n "$STACK_NS" rollout status deployment "$STACK_RELEASE-operator" --timeout=120s >/dev/null ||
    log "the stack's operator is not available yet: kubectl -n $STACK_NS get pods"
  rm -f "$saved"
}

# kubectl port-forward on loopback, like a user reaching a cluster from
# outside: the example Gateway's broker and command API. A forward ends
# when the pod behind it goes (a Gateway change rolls its pod): the loop
# starts it again, on the new pod, a second later.
start_port_forward() { # start_port_forward <name> <local port> <target> <remote port>
  local name=port-forward-$1
  alive "$STATE/pids/$name" && return 0
  forward_forever "$3" "$2:$4" >"$STATE/logs/$name.log" 2>&1 &
  echo $! >"$STATE/pids/$name"
  wait_for 30 "port-forward to $3:$4" port_open "$2"
}

# Runs in the background until stop_pid sends TERM, which ends the running
# kubectl too.
forward_forever() { # forward_forever <target> <local:remote>
  local child=''
  trap '' HUP
  trap '[ -n "$child" ] && kill "$child" 2>/dev/null; exit 0' TERM INT
  while :; do
    "$CACHE/bin/fleetward-cp" kubectl -n "$STACK_NS" port-forward --address 127.0.0.1 "$1" "$2" &
    child=$!
    wait "$child" || true
    log "port-forward to $1 ended; starting it again"
    sleep 1
  done
}

stop_port_forwards() {
  stop_pid port-forward-mqtt
  stop_pid port-forward-command
}

stack_summary() {
  kubectl_cmd -n "$STACK_NS" get deployment "$STACK_RELEASE-operator" >/dev/null 2>&1 || {
    echo "  stack           not installed (./deploy.sh dev-up installs it)"
    return 0
  }
  local prom am rules
  prom=$(kubectl_cmd -n "$STACK_NS" get svc "$STACK_RELEASE-prometheus" -o jsonpath='{.spec.clusterIP}' 2>/dev/null)
  am=$(kubectl_cmd -n "$STACK_NS" get svc "$STACK_RELEASE-alertmanager" -o jsonpath='{.spec.clusterIP}' 2>/dev/null)
  rules=$(curl -fsS --max-time 5 "http://$prom:9090/api/v1/rules?type=alert" 2>/dev/null | grep -o '"type":"alerting"' | wc -l)
  cat <<EOF
  stack           helm release $STACK_RELEASE in namespace $STACK_NS (kubectl -n $STACK_NS get pods)
  MQTT broker     localhost:$MQTT_PORT (mTLS, Gateway $STACK_NS/edge, via kubectl port-forward)
  command API     https://localhost:$COMMAND_PORT/command/<device> (bearer key: Secret edge-command-api; edge-command-meter sends read_meter to meters only)
  Prometheus      http://${prom:-?}:9090 (the host routes Service addresses to the node), $rules alert rules loaded
  Alertmanager    http://${am:-?}:9093/api/v2/alerts (what fires; route it: alertmanager.webhookUrl or .config)
  billing         kubectl -n $STACK_NS get fwtariff (each Tariff's API: Service <tariff>-billing, bearer key in Secret <tariff>-billing-api)
EOF
  if [ -x "$CACHE/bin/fleetward-sim" ]; then
    echo "  simulator       fleetward-sim --namespace $STACK_NS --port $MQTT_PORT run --gateway edge   (on the PATH after . $ENV_FILE)"
  else
    echo "  simulator       cargo run --release -p fleetward-simulator --bin fleetward-sim -- --namespace $STACK_NS --port $MQTT_PORT run --gateway edge"
  fi
}

# minikube: the same images, built by minikube's own container runtime from
# the same Dockerfiles (with the internet, public base images), and the
# chart with the public PostgreSQL, Kafka and Prometheus images.
MINIKUBE_VALUES=$ROOT/devenv/values-minikube.yaml
minikube_up() {
  need go golang-go
  command -v kubectl >/dev/null 2>&1 || die "missing 'kubectl': put one on the PATH (minikube can fetch its own: minikube kubectl -- version)"
  build_helm
  minikube status >/dev/null 2>&1 || minikube start || die "minikube start failed"
  local v=$FLEETWARD_VERSION target
  for target in operator gateway ingestor encryptor billing; do
    log "building $IMAGE_REGISTRY/$target:$v in minikube"
    minikube image build -t "$IMAGE_REGISTRY/$target:$v" -f Dockerfile --build-opt="target=$target" "$ROOT" ||
      die "building $target in minikube failed"
  done
  minikube image build -t "$IMAGE_REGISTRY/mosquitto:$v" "$ROOT/workloads/mosquitto" || die "building mosquitto failed"
  minikube image build -t localhost/fleetward/station-api:0.1.0 -f Dockerfile.station-api "$(station_api_context)" ||
    die "building the station API stand-in failed"
  export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}
  LOCAL_VALUES=$MINIKUBE_VALUES stack_up minikube
  cat >&2 <<EOF

fleetward runs on minikube (namespace $STACK_NS):
  kubectl -n $STACK_NS get pods,fleetward
  broker:      kubectl -n $STACK_NS port-forward svc/edge 8883:8883
  command API: kubectl -n $STACK_NS port-forward svc/edge-api 8443:8443
  Prometheus:  kubectl -n $STACK_NS port-forward svc/$STACK_RELEASE-prometheus 9090:9090
Remove it:     ./deploy.sh local-down
EOF
}

minikube_down() {
  export KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}
  stack_down
}

# minikube image build reads the Dockerfile from its context directory.
station_api_context() {
  local ctx=$CACHE/images/station-api-context
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$ROOT/testdata/stations/jcdecaux-v1-dublin.json" "$ctx/"
  cp "$ROOT/devenv/images/station-api/Dockerfile" "$ctx/Dockerfile.station-api"
  echo "$ctx"
}
