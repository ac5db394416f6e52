#!/usr/bin/env bash
# fleetward on AWS, for `./deploy.sh aws-up` and `./deploy.sh aws-down`:
#
#   devenv/aws.sh up   [region] [--plan] [--yes]
#   devenv/aws.sh down [region] [--plan] [--yes]
#
# up: terraform/ (EKS, RDS PostgreSQL, ECR, the IAM roles) applied; the
# images built from the repository's Dockerfiles and pushed to ECR; a
# default StorageClass (encrypted gp3 on the EBS CSI driver); the chart
# installed with the operator's IRSA role, the images from ECR, the
# RDS database (a Secret made from Secrets Manager, sslmode=require) instead
# of the in-cluster PostgreSQL, and the region for AWS IoT Core. It ends by
# printing the endpoints and how to try a device against IoT Core.
#
# down, in the order that leaves nothing behind: the fleet's Devices and
# Gateways deleted while the operator still runs (its finalizers remove the
# things, certificates and policies from IoT Core), the release and its
# volumes (gone from EBS before the driver goes), then `terraform destroy`.
#
# --plan prints every step and its exact command and runs none of them: no
# AWS call, no terraform, nothing written. Every command goes through `run`
# (or `capture`, or `probe` for a read that decides whether a step is
# needed, shown with ?), which either prints it or prints and runs it, so
# the plan is the trace of a real run. The plan needs nothing but bash;
# values that come from terraform's outputs show as <output name>.
# --yes: terraform applies and destroys without asking (CI).
#
# Region: the first argument, eu-west-1 by default. Settings:
#   FLEETWARD_AWS_NAMESPACE      the release's namespace (fleetward), passed to
#                                terraform as operator_namespace (its IRSA trust);
#                                its iot_namespaces say where Gateways and
#                                Devices may use IoT Core
#   FLEETWARD_IMAGE_TAG          the images' tag (<version>-<commit>, and
#                                -dirty-<time> for uncommitted changes: ECR's
#                                tags are immutable)
#   FLEETWARD_AWS_PLATFORM       the EKS nodes' platform (linux/amd64)
#   FLEETWARD_TF_BACKEND_CONFIG  a file for `terraform init -backend-config=`
#                                (where terraform/ keeps its state)
# Other terraform inputs as usual: TF_VAR_<name> or terraform/*.auto.tfvars,
# e.g. cluster_endpoint_public_access: the cluster's API is private by
# default, so kubectl and helm must otherwise run inside the VPC.
set -euo pipefail
if [ "${BASH_VERSINFO[0]}" -lt 4 ] || { [ "${BASH_VERSINFO[0]}" = 4 ] && [ "${BASH_VERSINFO[1]}" -lt 4 ]; }; then
  echo "error: devenv/aws.sh needs bash 4.4 or newer, this is $BASH_VERSION (macOS: brew install bash)" >&2
  exit 1
fi

# Builtins only up to the plan's first command: --plan runs with nothing
# but bash on the PATH.
ROOT=$(cd -- "${BASH_SOURCE[0]%/*}/.." 2>/dev/null && pwd) || ROOT=$(cd .. && pwd)
STATE=${FLEETWARD_DEV_DIR:-$ROOT/.dev}
# helm (devenv/dev.sh) and tofu (devenv/terraform-check.sh) as this
# repository builds them, when the machine has none of its own.
PATH=$PATH:${FLEETWARD_CACHE_DIR:-$ROOT/.cache}/bin
DEFAULT_REGION=eu-west-1
TF_DIR=terraform
RELEASE=fleetward
NAMESPACE=${FLEETWARD_AWS_NAMESPACE:-fleetward}
# The chart's name for the admin's database Secret (the RDS master user):
# the Job that makes the per-workload roles runs as it.
DB_SECRET=$RELEASE-database
# Where the chart's per-workload roles reach it (set by database_secret).
DB_HOST="" DB_PORT="" DB_NAME=""
PLATFORM=${FLEETWARD_AWS_PLATFORM:-linux/amd64}
# Image name -> ECR repository key (terraform output ecr_repository_urls);
# the Rust images are targets of ./Dockerfile, Mosquitto has its own.
IMAGES=(operator gateway ingestor encryptor billing mosquitto)

# shellcheck source=devenv/common.sh
. "$ROOT/devenv/common.sh"

# ---------------------------------------------------------------- the plan

PLAN=0
STEP=0
# The trace: stdout for a plan (it is what was asked for), stderr in a real
# run (beside the commands' own output).
step() {
  STEP=$((STEP + 1))
  printf '\n[%d] %s\n' "$STEP" "$*" >&3
}
note() { printf '    %s\n' "$*" >&3; }

# One argument as it would be typed: plain words as they are, the rest in
# single quotes. A lone | joins the stages of a pipeline.
quote_arg() {
  local safe='^[-A-Za-z0-9_./:=@%+,<>]+$' q="'\\''"
  if [ "$1" = '|' ] || [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/$q}"
  fi
}

quote_command() {
  local out='' arg
  for arg in "$@"; do out+="${out:+ }$(quote_arg "$arg")"; done
  printf '%s' "$out"
}

# pipeline <cmd...> [| <cmd...>]...: runs the stages joined by pipes, so a
# secret passes from one stage to the next on stdin, never as an argument.
pipeline() {
  local i
  for ((i = 1; i <= $#; i++)); do
    if [ "${!i}" = '|' ]; then
      "${@:1:i-1}" | pipeline "${@:i+1}"
      return
    fi
  done
  "$@"
}

# run <cmd...>: prints the command; outside a plan, runs it too. HINT, when
# set, is the error message of a failure.
run() {
  printf '    + %s\n' "$(quote_command "$@")" >&3
  [ "$PLAN" = 1 ] && return 0
  pipeline "$@" || die "${HINT:-failed: $(quote_command "$@")}"
}

# capture <var> <placeholder> <cmd...>: like run, and the command's output
# goes into <var>; in a plan <var> holds the placeholder.
capture() {
  local var=$1 placeholder=$2 out
  shift 2
  printf '    + %s\n' "$(quote_command "$@")" >&3
  if [ "$PLAN" = 1 ]; then
    printf -v "$var" '%s' "$placeholder"
    return 0
  fi
  out=$(pipeline "$@") || die "${HINT:-failed: $(quote_command "$@")}"
  printf -v "$var" '%s' "$out"
}

# probe assume-yes|assume-no <cmd...>: a read that decides whether a step is
# needed, printed like every command (with ?). Its success is the answer;
# a plan cannot ask, and takes the answer given.
probe() {
  local assume=$1
  shift
  printf '    ? %s\n' "$(quote_command "$@")" >&3
  if [ "$PLAN" = 1 ]; then
    [ "$assume" = assume-yes ]
    return
  fi
  pipeline "$@" >/dev/null 2>&1
}

# ----------------------------------------------------------- prerequisites

MISSING=()
# need <label> <install hint> <command...>: the first command found is
# printed (and returned in FOUND); none found is reported, and fails the
# run once every prerequisite has been checked.
need() {
  local label=$1 hint=$2 cmd path
  shift 2
  FOUND=''
  for cmd in "$@"; do
    if path=$(command -v "$cmd"); then
      FOUND=$cmd
      note "$(printf '%-32s %s' "$label" "$path")"
      return 0
    fi
  done
  note "$(printf '%-32s MISSING: %s' "$label" "$hint")"
  MISSING+=("$label")
  FOUND=$1
}

check_prereqs() { # check_prereqs up|down
  step "prerequisites"
  MISSING=()
  need "aws (AWS CLI)" "install the AWS CLI v2 (https://aws.amazon.com/cli/) or the Debian package awscli" aws
  need "terraform or tofu" "install Terraform (https://developer.hashicorp.com/terraform/install) or OpenTofu" terraform tofu
  TF=$FOUND
  need "helm" "install Helm 3 (https://helm.sh/docs/intro/install/)" helm
  need "kubectl" "install kubectl (https://kubernetes.io/docs/tasks/tools/)" kubectl
  need "jq (reads terraform's outputs)" "install the Debian package jq" jq
  if [ "$1" = up ]; then
    need "docker or buildah (image builds)" "install Docker or the Debian package buildah" docker buildah
    IMAGE_TOOL=$FOUND
    # A docker client without a daemon cannot build; buildah needs none.
    if [ "$PLAN" = 0 ] && [ "$IMAGE_TOOL" = docker ] && ! docker info >/dev/null 2>&1; then
      if command -v buildah >/dev/null 2>&1; then
        IMAGE_TOOL=buildah
        note "docker has no running daemon: building with buildah"
      else
        note "docker has no running daemon: start it, or install the Debian package buildah"
        MISSING+=("a docker daemon")
      fi
    fi
  fi
  if [ ${#MISSING[@]} -gt 0 ] && [ "$PLAN" = 0 ]; then
    die "missing: ${MISSING[*]} (what to install is on each line above)"
  fi
  note "AWS credentials (an IAM identity in the target account):"
  HINT="no usable AWS credentials: run 'aws configure' or 'aws sso login', or set AWS_PROFILE" \
    capture CALLER '<caller arn>' aws sts get-caller-identity --query Arn --output text
  note "acting as $CALLER"
}

# -------------------------------------------------------------- terraform

tf_init() {
  local args=(-chdir="$TF_DIR" init -input=false)
  [ -n "${FLEETWARD_TF_BACKEND_CONFIG:-}" ] && args+=(-backend-config="$FLEETWARD_TF_BACKEND_CONFIG")
  run "$TF" "${args[@]}"
}

# tf_output <name> [key]: one of terraform's outputs (a map's entry with
# key); <name> or <name.key> in a plan.
tf_output() {
  local name=$1 key=${2:-}
  if [ "$PLAN" = 1 ]; then
    printf '<%s%s>' "$name" "${key:+.$key}"
    return 0
  fi
  jq -er --arg name "$name" --arg key "$key" '.[$name].value | if $key == "" then . else .[$key] end' \
    <<<"$TF_OUTPUTS" || die "terraform has no output $name${key:+[$key]} (terraform/outputs.tf)"
}

read_outputs() {
  capture TF_OUTPUTS '{}' "$TF" -chdir="$TF_DIR" output -json
}

use_cluster() {
  CLUSTER=$(tf_output cluster_name)
  # A kubeconfig of its own: the user's ~/.kube/config and its current
  # context stay as they were.
  KUBECONFIG_FILE=$STATE/aws/$REGION/kubeconfig
  run mkdir -p "${KUBECONFIG_FILE%/*}"
  run aws eks update-kubeconfig --region "$REGION" --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE"
  export KUBECONFIG=$KUBECONFIG_FILE
}

# -------------------------------------------------------------------- up

image_tag() {
  if [ -n "${FLEETWARD_IMAGE_TAG:-}" ]; then
    echo "$FLEETWARD_IMAGE_TAG"
    return 0
  fi
  local version='' line commit now
  printf -v now '%(%Y%m%d%H%M%S)T' -1
  while IFS= read -r line; do
    if [[ $line =~ ^version\ =\ \"(.*)\" ]]; then
      version=${BASH_REMATCH[1]}
      break
    fi
  done <"$ROOT/Cargo.toml"
  # ECR's tags are immutable: uncommitted changes, or a tree without git,
  # make a tag of their own.
  if command -v git >/dev/null 2>&1 && commit=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null); then
    if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
      commit+=-dirty-$now
    fi
  elif [ "$PLAN" = 1 ]; then
    commit='<commit>'
  else
    commit=nogit-$now
  fi
  echo "$version-$commit"
}

# repository <url> <image>: the repository's name in its URL,
# <account>.dkr.ecr.<region>.amazonaws.com/<name>/<image>.
repository() {
  if [ "$PLAN" = 1 ]; then echo "<name>/$2"; else echo "${1#*/}"; fi
}

push_images() {
  local tag url registry name
  tag=$(image_tag)
  step "images: built for $PLATFORM and pushed to ECR as :$tag"
  registry=$(tf_output ecr_repository_urls operator)
  registry=${registry%%/*}
  [ "$PLAN" = 1 ] && registry="<account>.dkr.ecr.$REGION.amazonaws.com"
  run aws ecr get-login-password --region "$REGION" '|' \
    "$IMAGE_TOOL" login --username AWS --password-stdin "$registry"
  for name in "${IMAGES[@]}"; do
    url=$(tf_output ecr_repository_urls "$name")
    IMAGE_REFS[$name]=$url:$tag
    # An immutable tag is pushed once: a second aws-up of the same commit
    # (say, after a failed install) reuses it.
    if probe assume-no aws ecr describe-images --region "$REGION" --repository-name "$(repository "$url" "$name")" \
      --image-ids "imageTag=$tag"; then
      note "$name:$tag is in ECR already"
      continue
    fi
    if [ "$name" = mosquitto ]; then
      run "$IMAGE_TOOL" build --platform "$PLATFORM" --tag "$url:$tag" workloads/mosquitto
    else
      run "$IMAGE_TOOL" build --platform "$PLATFORM" --target "$name" --tag "$url:$tag" --file Dockerfile .
    fi
    run "$IMAGE_TOOL" push "$url:$tag"
  done
}

# The default StorageClass for every claim (the chart's Kafka among them):
# gp3 volumes from the EBS CSI driver (terraform/storage.tf), encrypted
# with the account's EBS key, as the nodes' root volumes are (terraform/
# has no customer-managed key for EBS, so no kmsKeyId). A volume is made
# when a pod first uses its claim (WaitForFirstConsumer), so in that pod's
# zone. One line of YAML, so that the plan shows it whole. EKS marks no StorageClass default
# since Kubernetes 1.30 (and of two defaults, Kubernetes picks the newer).
storage_class() {
  local manifest='{apiVersion: storage.k8s.io/v1, kind: StorageClass, '
  manifest+='metadata: {name: gp3, labels: {app.kubernetes.io/part-of: fleetward}, '
  manifest+='annotations: {storageclass.kubernetes.io/is-default-class: "true"}}, '
  manifest+='provisioner: ebs.csi.aws.com, parameters: {type: gp3, encrypted: "true"}, '
  manifest+='reclaimPolicy: Delete, volumeBindingMode: WaitForFirstConsumer, allowVolumeExpansion: true}'
  step "storage: default StorageClass gp3 (EBS CSI driver, encrypted)"
  run printf '%s\n' "$manifest" '|' kubectl apply --server-side --field-manager=fleetward-deploy -f -
}

# The URL of the RDS database, from the secret RDS keeps in Secrets Manager,
# into the Secret the chart and the fleet's resources read (key url). The
# password goes from aws to jq to kubectl on stdin: never an argument, never
# on the terminal. jq writes the whole Secret, so a failed read leaves
# kubectl nothing to apply (rather than an empty URL); server-side apply
# keeps no copy of it in a last-applied annotation.
# shellcheck disable=SC2016 # $host, $port, $db, $name and $ns are jq's variables.
database_secret() {
  local secret host port db
  local manifest='{apiVersion: "v1", kind: "Secret", type: "Opaque", '
  manifest+='metadata: {name: $name, namespace: $ns, labels: {"app.kubernetes.io/part-of": "fleetward"}}, '
  manifest+='stringData: {url: "postgres://\(.username // error("no username") | @uri):\(.password // error("no password") | @uri)'
  manifest+='@\($host):\($port)/\($db)?sslmode=require"}}'
  step "database: Secret $NAMESPACE/$DB_SECRET (key url, sslmode=require) from Secrets Manager"
  secret=$(tf_output db_secret_arn)
  host=$(tf_output db_endpoint)
  # The host alone (RDS's `address`); were it `endpoint`, host:port, the
  # port would come twice.
  [ "$PLAN" = 1 ] || host=${host%%:*}
  port=$(tf_output db_port)
  db=$(tf_output db_name)
  # The chart's per-workload roles reach the same server (install_chart).
  DB_HOST=$host DB_PORT=$port DB_NAME=$db
  run kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml '|' kubectl apply -f -
  HINT="could not make the database Secret from $secret (its JSON needs username and password)" \
    run aws secretsmanager get-secret-value --region "$REGION" --secret-id "$secret" \
    --query SecretString --output text '|' \
    jq -c --arg host "$host" --arg port "$port" --arg db "$db" --arg name "$DB_SECRET" --arg ns "$NAMESPACE" \
    "$manifest" '|' \
    kubectl apply --server-side --field-manager=fleetward-deploy -f -
}

install_chart() {
  local role name args=()
  step "chart: helm upgrade --install $RELEASE in namespace $NAMESPACE (RDS, images from ECR, IRSA)"
  role=$(tf_output operator_role_arn)
  for name in "${IMAGES[@]}"; do
    args+=(--set "images.overrides.$name=${IMAGE_REFS[$name]}")
  done
  run helm upgrade --install "$RELEASE" helm/fleetward --namespace "$NAMESPACE" --create-namespace \
    --set postgresql.enabled=false --set "database.existingSecret=$DB_SECRET" \
    --set "database.roles.host=$DB_HOST" --set "database.roles.port=$DB_PORT" \
    --set "database.roles.database=$DB_NAME" --set database.roles.sslmode=require \
    "${args[@]}" \
    --set-string "operator.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=$role" \
    --set "operator.aws.region=$REGION" \
    --take-ownership --wait --timeout 15m
}

summary() {
  local endpoint operator_role db_host text
  step "endpoints"
  capture endpoint '<iot data endpoint>' \
    aws iot describe-endpoint --region "$REGION" --endpoint-type iot:Data-ATS --query endpointAddress --output text
  operator_role=$(tf_output operator_role_arn)
  db_host=$(tf_output db_endpoint)
  # read, not cat: the plan runs on bash alone.
  IFS= read -r -d '' text <<EOF || true

fleetward runs on EKS ($REGION):
  cluster         $CLUSTER   (export KUBECONFIG=$KUBECONFIG_FILE)
  release         $RELEASE in namespace $NAMESPACE: kubectl -n $NAMESPACE get pods
  database        $db_host (RDS PostgreSQL, TLS), URL in Secret $NAMESPACE/$DB_SECRET
  images          ${IMAGE_REFS[operator]} (and gateway, ingestor, encryptor, billing, mosquitto)
  AWS IoT Core    $endpoint:8883 (MQTT, mutual TLS)
  operator        IAM role $operator_role (IRSA, ServiceAccount $NAMESPACE/$RELEASE-operator)
  gateways        no IAM role: each connects with its own certificate, allowed what
                  the IoT policy the operator registers allows (${NAMESPACE}_<gateway>_gateway)

Try a device against AWS IoT Core:
  export KUBECONFIG=$KUBECONFIG_FILE
  kubectl apply -f - <<'YAML'
  apiVersion: fleetward.io/v1alpha1
  kind: Gateway
  metadata: {name: iot, namespace: $NAMESPACE}
  spec:
    provider: awsIot
    awsIot: {region: $REGION}
  ---
  apiVersion: fleetward.io/v1alpha1
  kind: Device
  metadata: {name: weather-aws-001, namespace: $NAMESPACE}
  spec: {gatewayRef: iot, category: weatherStation}
  YAML
  kubectl -n $NAMESPACE wait --for=condition=Ready gateway/iot device/weather-aws-001 --timeout=180s
  for k in tls.crt tls.key; do
    kubectl -n $NAMESPACE get secret weather-aws-001-credentials -o jsonpath="{.data.\${k//./\\\\.}}" | base64 -d > /tmp/\$k
  done
  thing=\$(kubectl -n $NAMESPACE get device weather-aws-001 -o jsonpath='{.status.awsIot.thingName}')
  mosquitto_pub -h $endpoint -p 8883 --capath /etc/ssl/certs --cert /tmp/tls.crt --key /tmp/tls.key \\
    -i "\$thing" -t device/weather-aws-001/data -m '{"hello":"aws"}'
  # and watch it arrive: AWS IoT console → MQTT test client → subscribe to device/+/data
Remove everything: ./deploy.sh aws-down $REGION
EOF
  printf '%s' "$text" >&3
}

up() {
  declare -gA IMAGE_REFS=()
  check_prereqs up
  step "infrastructure: terraform apply in $TF_DIR/ (region $REGION)"
  tf_init
  run "$TF" -chdir="$TF_DIR" apply -input=false "${APPROVE[@]}" "${TF_VARS[@]}"
  read_outputs
  push_images
  step "cluster: kubeconfig for EKS"
  use_cluster
  storage_class
  database_secret
  install_chart
  summary
}

# ------------------------------------------------------------------ down

# terraform deletes no ECR repository that holds images: every image goes
# first, 100 at a time (batch-delete-image's limit; an index and its
# platform manifests may take a second round).
empty_repositories() {
  local name url repo ids round
  step "registries: the images in ECR deleted"
  for name in "${IMAGES[@]}"; do
    url=$(tf_output ecr_repository_urls "$name")
    repo=$(repository "$url" "$name")
    for ((round = 1; ; round++)); do
      [ "$round" -le 20 ] || die "$repo still holds images after 20 rounds of deletion"
      capture ids '<up to 100 image ids>' aws ecr list-images --region "$REGION" --repository-name "$repo" \
        --max-items 100 --query imageIds --output json
      [ "$PLAN" = 0 ] && [ "$ids" = '[]' ] && break
      run aws ecr batch-delete-image --region "$REGION" --repository-name "$repo" --image-ids "$ids"
      [ "$PLAN" = 1 ] && break
    done
  done
}

# in_state <address>: whether terraform's state (TF_STATE, `show -json`)
# holds that resource; a plan assumes it does.
in_state() {
  [ "$PLAN" = 1 ] && return 0
  jq -e --arg address "$1" 'any(.. | objects; .address? == $address)' <<<"$TF_STATE" >/dev/null
}

down() {
  check_prereqs down
  step "state: what aws-up made (terraform's state and outputs)"
  tf_init
  capture TF_STATE '<state>' "$TF" -chdir="$TF_DIR" show -json
  if [ "$PLAN" = 0 ] && ! jq -e '.values.root_module // {} | has("resources") or has("child_modules")' \
    <<<"$TF_STATE" >/dev/null; then
    note "terraform's state holds nothing in $REGION: nothing to remove"
    return 0
  fi
  read_outputs
  if [ "$PLAN" = 0 ] && [ "$TF_OUTPUTS" = '{}' ]; then
    note "terraform holds no outputs (an aws-up that stopped early): no cluster to empty"
  else
    step "cluster: kubeconfig for EKS"
    use_cluster
    step "the fleet: Devices, then Gateways, deleted while the operator runs (its finalizers clean AWS IoT Core)"
    if probe assume-yes kubectl get crd devices.fleetward.io gateways.fleetward.io; then
      local stuck="still there after 10 minutes: the operator must run to remove them from AWS IoT Core (kubectl -n $NAMESPACE logs deploy/$RELEASE-operator)"
      HINT="Devices $stuck" run kubectl delete devices.fleetward.io --all --all-namespaces --wait=true --timeout=10m
      HINT="Gateways $stuck" run kubectl delete gateways.fleetward.io,stationfeeds.fleetward.io,tariffs.fleetward.io \
        --all --all-namespaces --wait=true --timeout=10m
    else
      note "fleetward's CRDs are not installed: no fleet to delete"
    fi
    step "release: helm uninstall $RELEASE, its volumes and namespace"
    if probe assume-yes helm status "$RELEASE" --namespace "$NAMESPACE"; then
      run helm uninstall "$RELEASE" --namespace "$NAMESPACE" --wait --timeout 10m
    else
      note "release $RELEASE is not installed"
    fi
    # StatefulSets keep their claims, and an EBS volume outlives the cluster:
    # the namespace takes the claims with it, and the driver, still running,
    # deletes their volumes (reclaimPolicy Delete) before terraform removes it.
    run kubectl delete namespace "$NAMESPACE" --ignore-not-found --wait=true --timeout=10m
    HINT="PersistentVolumes still there after 10 minutes (kubectl get pv): their EBS volumes would outlive the cluster; delete them, or their volumes by hand after aws-down" \
      run kubectl wait --for=delete persistentvolumes --all --timeout=10m
    empty_repositories
  fi
  # Only the database is changed (-target): a plain apply would also make
  # whatever an interrupted aws-up had not made yet.
  if in_state aws_db_instance.this; then
    step "database: deletion protection lifted (RDS still keeps its final snapshot)"
    run "$TF" -chdir="$TF_DIR" apply -input=false "${APPROVE[@]}" -target=aws_db_instance.this \
      "${TF_VARS[@]}" -var deletion_protection=false
  fi
  step "infrastructure: terraform destroy in $TF_DIR/ (region $REGION)"
  run "$TF" -chdir="$TF_DIR" destroy -input=false "${APPROVE[@]}" "${TF_VARS[@]}" -var deletion_protection=false
  [ -n "${KUBECONFIG_FILE:-}" ] && run rm -f "$KUBECONFIG_FILE"
  step "done: fleetward's AWS resources in $REGION are gone"
}

# ------------------------------------------------------------------ main

main() {
  local action='' region='' arg
  APPROVE=()
  for arg in "$@"; do
    case $arg in
      --plan) PLAN=1 ;;
      --yes) APPROVE=(-auto-approve) ;;
      -*) die "unknown option $arg (usage: $0 up|down [region] [--plan] [--yes])" ;;
      *)
        if [ -z "$action" ]; then
          action=$arg
        elif [ -z "$region" ]; then
          region=$arg
        else
          die "unexpected argument $arg (usage: $0 up|down [region] [--plan] [--yes])"
        fi
        ;;
    esac
  done
  case $action in
    up | down) ;;
    *) die "usage: $0 up|down [region] [--plan] [--yes]" ;;
  esac
  REGION=${region:-$DEFAULT_REGION}
  [[ $REGION =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "not an AWS region: $REGION"
  TF_VARS=(-var "region=$REGION" -var "operator_namespace=$NAMESPACE")
  cd "$ROOT"
  if [ "$PLAN" = 1 ]; then
    exec 3>&1
    printf 'Plan of ./deploy.sh aws-%s %s: every step and command, none of them run.\n' "$action" "$REGION" >&3
  else
    exec 3>&2
    log "aws-$action in $REGION"
  fi
  "$action"
}

main "$@"
