#!/usr/bin/env bash
# Local, Docker-free services for fleetward's development loop and tests:
# a real one-node Kubernetes cluster (kube-apiserver + etcd,
# kube-controller-manager, kube-scheduler, kubelet on containerd, kube-proxy,
# CoreDNS), and PostgreSQL, Apache Kafka (KRaft) on loopback for the fast
# integration tests. `up` also builds the images and installs the whole
# stack with the Helm chart, as `./deploy.sh local-up` does.
#
#   devenv/dev.sh up [--no-stack] [--no-test-services]
#                                   start what is not running yet (idempotent)
#   devenv/dev.sh down              stop exactly what `up` started (pid files)
#   devenv/dev.sh images [node|minikube]   build every image and load it
#   devenv/dev.sh stack-up | stack-down    the chart + examples on the node
#   devenv/dev.sh minikube-up | minikube-down   the same on minikube
#   devenv/dev.sh status            show what runs
#   devenv/dev.sh env               print the env file path
#
# Heavy artifacts are built/downloaded once into .cache/ (git-ignored);
# service state, logs and pid files live in .dev/ (git-ignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${FLEETWARD_CACHE_DIR:-$ROOT/.cache}
STATE=${FLEETWARD_DEV_DIR:-$ROOT/.dev}
ENV_FILE=$STATE/env

APISERVER_PORT=${FLEETWARD_APISERVER_PORT:-16443}
ETCD_PORT=${FLEETWARD_ETCD_PORT:-12379}
PG_PORT=${FLEETWARD_PG_PORT:-15432}
KAFKA_PORT=${FLEETWARD_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${FLEETWARD_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_TLS_PORT=${FLEETWARD_KAFKA_TLS_PORT:-19094}
MQTT_PORT=${FLEETWARD_MQTT_PORT:-18883}
COMMAND_PORT=${FLEETWARD_COMMAND_PORT:-18443}
HELM_VERSION=v3.22.0
PG_USER=fleetward
PG_PASSWORD=fleetward
PG_DB=fleetward

# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"

# need <command> <debian-package>: installs the package when we can (root
# with apt-get), otherwise names it in a one-line error.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing $2 (for $1)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null; } ||
      die "could not install $2; install it and retry"
    command -v "$1" >/dev/null 2>&1 || die "$1 still missing after installing $2"
  else
    die "missing '$1': install the Debian package '$2'"
  fi
}

header_present() {
  [ -f "/usr/include/$1" ] || [ -f "/usr/include/$(gcc -print-multiarch 2>/dev/null)/$1" ]
}

# need_pkg <debian-package> <what it provides>: for files rather than commands.
need_pkg() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing $1 (for $2)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null; } ||
      die "could not install $1; install it and retry"
  else
    die "missing $2: install the Debian package '$1'"
  fi
}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

prereqs() {
  need go golang-go
  need java default-jre-headless
  need mvn maven
  need openssl openssl
  need mosquitto mosquitto
  need mosquitto_pub mosquitto-clients
  need curl curl
  need python3 python3
  # The billing test renders a bill and screenshots it headless.
  need chromium chromium
  pg_bin >/dev/null || need /usr/lib/postgresql/15/bin/initdb postgresql
  # librdkafka is compiled from source by rdkafka-sys (cmake). Its 2.12
  # sources include <curl/curl.h> under an #ifdef that is always true in a
  # CMake build, even without curl support, so the header must exist.
  need cmake cmake
  need c++ g++
  header_present curl/curl.h || need_pkg libcurl4-openssl-dev "the curl/curl.h header"
  # The broker's fleetward_broker plugin is C against Mosquitto's plugin API,
  # built by make.
  need make make
  header_present mosquitto_broker.h || need_pkg mosquitto-dev "Mosquitto's plugin headers"
  header_present mosquitto.h || need_pkg libmosquitto-dev "the mosquitto.h header"
  header_present openssl/x509.h || need_pkg libssl-dev "OpenSSL's headers"
  command -v cargo >/dev/null || die "missing 'cargo': install Rust with rustup (https://rustup.rs)"
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for <seconds> <description> <command...>
  local secs=$1 what=$2; shift 2
  local i
  for ((i = 0; i < secs * 2; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  die "$what not ready after ${secs}s (logs: $STATE/logs)"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Runs a command as the postgres user when we are root (PostgreSQL refuses
# to run as root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

build_controlplane() {
  local bin=$CACHE/bin/fleetward-cp src=$ROOT/devenv/controlplane
  if [ -x "$bin" ] && [ -z "$(find "$src" -newer "$bin" -type f)" ]; then
    return 0
  fi
  log "building the cluster (apiserver, controller-manager, scheduler, kubelet, kube-proxy) from k8s.io/kubernetes (first time: ~10 min on 2 cores)"
  mkdir -p "$CACHE/bin"
  # Version stamps, as upstream's build sets them: clients and charts read them.
  local kver minor v ldflags="-s -w"
  kver=$(sed -n 's#^[[:space:]]*k8s.io/kubernetes \(v[0-9.]*\)$#\1#p' "$src/go.mod")
  minor=$(echo "$kver" | cut -d. -f2)
  for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags="$ldflags -X $v.gitVersion=$kver -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
  done
  (cd "$src" && go build -trimpath -ldflags="$ldflags" -o "$bin.tmp" .) || die "cluster build failed"
  mv "$bin.tmp" "$bin"
}

# helm, from the Go module proxy (pinned), for the chart's tests.
# With the version flags helm's own Makefile sets: without them `helm
# version` says v3.22 and `helm template` renders for Kubernetes v1.20 (the
# default its source carries), so a chart's kubeVersion refused it. The
# Kubernetes version is the one helm's client-go is built from, as in the
# Makefile (client-go v0.N → Kubernetes 1.N).
build_helm() {
  local stamp=$CACHE/bin/.helm-$HELM_VERSION-v2 dir minor flags
  [ -x "$CACHE/bin/helm" ] && [ -f "$stamp" ] && return 0
  log "building helm $HELM_VERSION from the Go module proxy"
  mkdir -p "$CACHE/bin"
  dir=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  minor=$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$dir/go.mod")
  [ -n "$minor" ] || die "no k8s.io/client-go version in helm $HELM_VERSION's go.mod"
  flags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in pkg/chartutil pkg/lint/rules; do
    flags="$flags -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$minor"
  done
  GOBIN=$CACHE/bin go install -trimpath -ldflags="$flags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || die "helm build failed"
  rm -f "$CACHE"/bin/.helm-*
  touch "$stamp"
}

# Third-party clients the tests use as independent peers (PyPI): paho-mqtt
# for a device written from the message-format description, cryptography
# to check our Fernet tokens decrypt elsewhere; moto's server stands in for
# AWS IoT Core (the only AWS the tests talk to, on loopback).
PY_PACKAGES=(paho-mqtt==2.1.0 cryptography==46.0.3 'moto[server,iot]==5.2.5')
python_env() {
  local venv=$CACHE/venv stamp
  stamp=$(printf '%s ' "${PY_PACKAGES[@]}" | sha256sum | cut -c1-16)
  [ -x "$venv/bin/python" ] && [ -f "$venv/.stamp-$stamp" ] && return 0
  log "installing Python test clients (${PY_PACKAGES[*]})"
  python3 -m venv "$venv" || die "python3 -m venv failed: install the Debian package python3-venv"
  "$venv/bin/pip" install -q "${PY_PACKAGES[@]}" || die "pip install failed"
  rm -f "$venv"/.stamp-*
  touch "$venv/.stamp-$stamp"
}

kubectl_cmd() {
  if command -v kubectl >/dev/null 2>&1; then
    kubectl "$@"
  else
    "$CACHE/bin/fleetward-cp" kubectl "$@"
  fi
}

fetch_kafka() {
  local libs=$CACHE/kafka/libs stamp
  stamp=$(sha256sum "$ROOT/devenv/kafka/pom.xml" | cut -c1-16)
  [ -f "$libs/.stamp-$stamp" ] && return 0
  log "downloading Apache Kafka jars from Maven Central"
  rm -rf "$libs"
  mvn -q -B -f "$ROOT/devenv/kafka/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$libs" -DincludeScope=runtime || die "Kafka download failed"
  touch "$libs/.stamp-$stamp"
}

start_apiserver() {
  local dir=$STATE/kube
  mkdir -p "$dir" "$STATE/logs" "$STATE/pids"
  "$CACHE/bin/fleetward-cp" pki --dir "$dir" --port "$APISERVER_PORT" --api-ip "$HOST_IP" \
    --node-name "$NODE_NAME" --node-ip "$NODE_IP"
  if ! alive "$STATE/pids/apiserver"; then
    log "starting kube-apiserver on $HOST_IP:$APISERVER_PORT (etcd 127.0.0.1:$ETCD_PORT)"
    nohup "$CACHE/bin/fleetward-cp" apiserver --dir "$dir" --port "$APISERVER_PORT" --etcd-port "$ETCD_PORT" \
      --api-ip "$HOST_IP" >"$STATE/logs/apiserver.log" 2>&1 &
    echo $! >"$STATE/pids/apiserver"
  fi
  export KUBECONFIG=$dir/kubeconfig
  wait_for 120 kube-apiserver kubectl_cmd get --raw /readyz
  if ! alive "$STATE/pids/controller-manager"; then
    log "starting kube-controller-manager"
    nohup "$CACHE/bin/fleetward-cp" controller-manager --dir "$dir" --api-ip "$HOST_IP" \
      >"$STATE/logs/controller-manager.log" 2>&1 &
    echo $! >"$STATE/pids/controller-manager"
  fi
}

start_postgres() {
  local bin data=$STATE/postgres/data sock=$STATE/postgres/sock
  bin=$(pg_bin)
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising PostgreSQL in $data"
    mkdir -p "$data" "$sock"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$STATE/postgres"
    local pw=$STATE/postgres/pw
    echo "$PG_PASSWORD" >"$pw"
    [ "$(id -u)" = 0 ] && chown postgres "$pw"
    as_pg "$bin/initdb" -D "$data" -U "$PG_USER" --pwfile="$pw" --auth=scram-sha-256 -E UTF8 >/dev/null
    rm -f "$pw"
  fi
  # TLS as in the chart's PostgreSQL (clients' default sslmode=prefer uses
  # it; sslmode=disable in a URL measures without it): a self-signed
  # certificate for 127.0.0.1, made once.
  local tls=$STATE/postgres/tls
  if [ ! -f "$tls/server.key" ]; then
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=127.0.0.1 \
      -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
      -keyout "$tls/server.key" -out "$tls/server.crt" >/dev/null 2>&1 || die "openssl could not make PostgreSQL's certificate"
    chmod 600 "$tls/server.key"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$tls"
  fi
  if ! as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    log "starting PostgreSQL on 127.0.0.1:$PG_PORT (TLS)"
    as_pg "$bin/pg_ctl" -D "$data" -l "$STATE/postgres/postgres.log" -w start \
      -o "-p $PG_PORT -k $sock -c listen_addresses=127.0.0.1 -c fsync=on -c ssl=on -c ssl_cert_file=$tls/server.crt -c ssl_key_file=$tls/server.key" >/dev/null
  fi
  head -1 "$data/postmaster.pid" >"$STATE/pids/postgres"
  wait_for 30 PostgreSQL port_open "$PG_PORT"
  if ! PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" | grep -q 1; then
    PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -qc "CREATE DATABASE $PG_DB" >/dev/null
  fi
}

# kafka_certificates <dir>: a CA, the broker's keystore for 127.0.0.1 and
# a client identity per role of the chart's broker (its CN is the
# principal), as the operator makes them: <dir>/<role>/{ca.crt,tls.crt,
# tls.key}; <dir>/anonymous holds only the CA, <dir>/rogue an identity
# from another CA. Made once.
kafka_certificates() {
  local dir=$1 role
  [ -f "$dir/server/keystore.pem" ] && return 0
  mkdir -p "$dir/server" "$dir/anonymous" "$dir/rogue"
  key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
  ca() { # ca <dir>: a self-signed CA in <dir>/ca.{crt,key}
    key "$1/ca.key"
    openssl req -x509 -new -key "$1/ca.key" -days 3650 -subj "/O=fleetward/CN=fleetward Kafka CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out "$1/ca.crt"
  }
  leaf() { # leaf <ca dir> <out dir> <cn> <extensions>
    key "$2/tls.key"
    openssl req -new -key "$2/tls.key" -subj "/O=fleetward/CN=$3" -out "$2/tls.csr"
    printf '%s\n' "$4" >"$2/ext"
    openssl x509 -req -in "$2/tls.csr" -CA "$1/ca.crt" -CAkey "$1/ca.key" -CAcreateserial -days 3650 \
      -extfile "$2/ext" -out "$2/tls.crt" 2>/dev/null
    cp "$1/ca.crt" "$2/ca.crt"
    rm -f "$2/tls.csr" "$2/ext"
  }
  ca "$dir"
  leaf "$dir" "$dir/server" fleetward-kafka-broker "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth"
  cat "$dir/server/tls.key" "$dir/server/tls.crt" >"$dir/server/keystore.pem"
  for role in gateway ingestor encryptor billing; do
    mkdir -p "$dir/$role"
    leaf "$dir" "$dir/$role" "fleetward-$role" "extendedKeyUsage=clientAuth"
  done
  cp "$dir/ca.crt" "$dir/anonymous/ca.crt"
  mkdir -p "$dir/rogue/ca"
  ca "$dir/rogue/ca"
  leaf "$dir/rogue/ca" "$dir/rogue" fleetward-gateway "extendedKeyUsage=clientAuth"
  cp "$dir/ca.crt" "$dir/rogue/ca.crt"
}

start_kafka() {
  local dir=$STATE/kafka libs=$CACHE/kafka/libs
  mkdir -p "$dir"
  alive "$STATE/pids/kafka" && return 0
  kafka_certificates "$dir/tls" || die "openssl could not make Kafka's certificates"
  # PLAINTEXT for most tests (its anonymous principal may do anything);
  # SSL as in the chart's broker (mutual TLS, principal = the CN, only the
  # chart's ACLs grant anything) for the tests and benchmarks of it.
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_TLS_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_TLS_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL
ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/server/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$dir/tls/ca.crt
ssl.principal.mapping.rules=RULE:^.*CN=([^,]+).*\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=$dir/data
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
EOF
  local java=(java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$ROOT/devenv/kafka/log4j2.properties" -cp "$libs/*")
  if [ ! -f "$dir/data/meta.properties" ]; then
    log "formatting Kafka storage (KRaft)"
    "${java[@]}" kafka.tools.StorageTool format -t "$("${java[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$dir/server.properties" >"$STATE/logs/kafka-format.log" 2>&1 || die "Kafka storage format failed (see $STATE/logs/kafka-format.log)"
  fi
  log "starting Kafka (KRaft) on 127.0.0.1:$KAFKA_PORT"
  nohup "${java[@]}" kafka.Kafka "$dir/server.properties" >"$STATE/logs/kafka.log" 2>&1 &
  echo $! >"$STATE/pids/kafka"
  wait_for 90 Kafka port_open "$KAFKA_PORT"
  # The chart's ACLs, written through the plaintext listener (a super
  # user here).
  wait_for 60 "Kafka's ACLs" env KAFKA_ACL_BOOTSTRAP="127.0.0.1:$KAFKA_PORT" KAFKA_LIBS="$libs" \
    sh "$ROOT/helm/fleetward/files/kafka-acls.sh"
}

stop_pid() { # stop_pid <name>
  local f=$STATE/pids/$1 pid i
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $1 (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$f"
}

# The broker plugin for the tests' host Mosquitto, by the Makefile the image
# builds it with (make rebuilds it when a source changes).
build_mosquitto_plugin() {
  log "building the Mosquitto plugin fleetward_broker"
  make -s -C "$ROOT/workloads/mosquitto/plugin" OUT="$CACHE/mosquitto"
}

write_env() {
  cat >"$ENV_FILE" <<EOF
# fleetward local services; source this file: . $ENV_FILE
export KUBECONFIG=$STATE/kube/kubeconfig
export DATABASE_URL=postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB
export KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
# The same broker with mutual TLS and the chart's ACLs; one client identity
# per role under the directory (see kafka_certificates in devenv/dev.sh).
export FLEETWARD_KAFKA_TLS_BROKERS=127.0.0.1:$KAFKA_TLS_PORT
export FLEETWARD_KAFKA_TLS_IDENTITIES=$STATE/kafka/tls
export MQTT_HOST=localhost
export MQTT_PORT=$MQTT_PORT
export FLEETWARD_NODE_IP=$NODE_IP
export FLEETWARD_HOST_IP=$HOST_IP
export FLEETWARD_CONTAINERD_SOCK=$CONTAINERD_SOCK
export FLEETWARD_KAFKA_LIBS=$CACHE/kafka/libs
export FLEETWARD_PYTHON=$CACHE/venv/bin/python
export FLEETWARD_MOSQUITTO_PLUGIN=$CACHE/mosquitto/fleetward_broker.so
export FLEETWARD_IMAGE_VERSION=$FLEETWARD_VERSION
# The AWS SDK's credential chain must never reach for the EC2 metadata
# address from here: the tests' AWS is moto on loopback.
export AWS_EC2_METADATA_DISABLED=true
export PATH=$CACHE/bin:\$PATH
EOF
  if ! command -v kubectl >/dev/null 2>&1; then
    ln -sf fleetward-cp "$CACHE/bin/kubectl"
  fi
}

# The cluster, and (unless told otherwise) the host services the fast
# integration tests use.
services_up() {
  local test_services=${1:-1}
  prereqs
  node_prereqs
  mkdir -p "$STATE/logs" "$STATE/pids"
  build_controlplane
  build_coredns
  build_helm
  fetch_kafka
  node_network_up
  start_apiserver
  if [ "$test_services" = 1 ]; then
    build_mosquitto_plugin
    python_env
    start_postgres
    start_kafka
  fi
  write_env
  node_up
}

up() {
  local stack=1 test_services=1 arg
  for arg in "$@"; do
    case $arg in
      --no-stack) stack=0 ;;
      --no-test-services) test_services=0 ;;
      *) die "up: unknown option $arg" ;;
    esac
  done
  services_up "$test_services"
  if [ "$stack" = 1 ]; then
    build_all_images
    load_all_images node
    stack_up node
  fi
  local services=""
  if [ "$test_services" = 1 ]; then
    services="  PostgreSQL      127.0.0.1:$PG_PORT  db=$PG_DB user=$PG_USER   (host, for the integration tests)
  Kafka           127.0.0.1:$KAFKA_PORT                          (host, for the integration tests)"
  fi
  cat >&2 <<EOF

fleetward local services are up:
  Kubernetes      https://$HOST_IP:$APISERVER_PORT, node $NODE_NAME ($NODE_IP)   (KUBECONFIG=$STATE/kube/kubeconfig)
$services
$(stack_summary)
Use them:   . $ENV_FILE && kubectl get pods,fleetward -A
Stop them:  ./deploy.sh dev-down (keeps the stack installed) or ./deploy.sh local-down (removes it)
EOF
}

down() {
  stop_port_forwards
  node_down
  stop_pid kafka
  stop_pid controller-manager
  stop_pid apiserver
  local bin
  if [ -f "$STATE/postgres/data/PG_VERSION" ] && bin=$(pg_bin) && as_pg "$bin/pg_ctl" -D "$STATE/postgres/data" status >/dev/null 2>&1; then
    log "stopping PostgreSQL"
    as_pg "$bin/pg_ctl" -D "$STATE/postgres/data" -m fast -w stop >/dev/null
  fi
  rm -f "$STATE/pids/postgres"
}

status() {
  local f
  for f in apiserver controller-manager scheduler provisioner containerd kubelet proxy postgres kafka \
    port-forward-mqtt port-forward-command; do
    if alive "$STATE/pids/$f"; then echo "$f: running (pid $(cat "$STATE/pids/$f"))"; else echo "$f: stopped"; fi
  done
}

# shellcheck source=devenv/node.sh
. "$ROOT/devenv/node.sh"
# shellcheck source=devenv/images.sh
. "$ROOT/devenv/images.sh"
# shellcheck source=devenv/stack.sh
. "$ROOT/devenv/stack.sh"

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  env) echo "$ENV_FILE" ;;
  images)
    services_up
    build_all_images
    load_all_images "${2:-node}"
    image_sizes
    ;;
  stack-up) export KUBECONFIG=$STATE/kube/kubeconfig; stack_up node ;;
  stack-down) export KUBECONFIG=$STATE/kube/kubeconfig; stack_down ;;
  minikube-up) minikube_up ;;
  minikube-down) minikube_down ;;
  pause-stack-operator) export KUBECONFIG=$STATE/kube/kubeconfig; pause_stack_operator ;;
  resume-stack-operator) export KUBECONFIG=$STATE/kube/kubeconfig; resume_stack_operator ;;
  *) die "usage: $0 up [--no-stack] [--no-test-services] | down | images [node|minikube] | stack-up | stack-down | minikube-up | minikube-down | pause-stack-operator | resume-stack-operator | status | env" ;;
esac
