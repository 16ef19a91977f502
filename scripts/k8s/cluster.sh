#!/usr/bin/env bash
# A Kubernetes control plane with Dapr's control plane, as plain processes in a private
# network + mount namespace: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok (one fake node: pods are scheduled, reported Running, Job pods Succeeded), and
# Dapr's sentry, operator and sidecar injector, deployed from Dapr's own Helm chart.
#
#   scripts/k8s/cluster.sh up             build when missing (scripts/k8s/build.sh), start
#   scripts/k8s/cluster.sh node-up        add a real node: kubelet, containerd, runc, kube-proxy,
#                                         CoreDNS (node.sh)
#   scripts/k8s/cluster.sh services-up    Kafka, Postgres and an SMTP sink on the lab's address
#   scripts/k8s/cluster.sh down           stop every process, drop the namespace and state
#   scripts/k8s/cluster.sh status         what runs
#   scripts/k8s/cluster.sh kubectl ARGS   kubectl as cluster admin, inside the namespace
#   scripts/k8s/cluster.sh exec CMD ARGS  any command inside the namespace, KUBECONFIG set
#
# Nothing on the host changes: the namespace has only its own loopback (with the lab's
# addresses 10.244.0.1 and the pod range 10.245.0.0/16 routed locally), its own /run and its
# own /etc/hosts (the Services' DNS names). Everything lives under $TASKEVENTS_STATE/k8s;
# `down` works after any failure: it stops every process inside the namespace (found by the
# namespace's inode), so the namespace disappears with them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../lib.sh"
source "$here/versions.sh"

STATE="$TASKEVENTS_STATE/k8s/run"
PKI="$STATE/pki"
# Kept after `down`, so a failed start can be read; emptied by the next `up`.
LOGS="$TASKEVENTS_STATE/k8s/logs"
PIDS="$STATE/pids"
K8S_BIN="$TASKEVENTS_CACHE/k8s/v$K8S_VERSION/bin"
DAPR_DIR="$TASKEVENTS_CACHE/k8s/dapr-$DAPR_VERSION"
DAPR_BIN="$DAPR_DIR/bin"
KWOK_STAGES="$TASKEVENTS_CACHE/k8s/v$K8S_VERSION/kwok-stages.yaml"
PYTHON="${PYTHON:-$(command -v python3)}"

# The lab's own address (the API server's, the fake node's, the webhooks' via /etc/hosts)
# and the fake node's pod range, both local to the namespace only.
LAB_IP=10.244.0.1
POD_CIDR=10.245.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_PORT=6443
NODE_NAME=kwok-node-0
ADMIN_KUBECONFIG="$PKI/admin.kubeconfig"
# What `status` reports, in start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok sentry operator injector containerd kubelet kube-proxy coredns)

holder_pid() { live_pid "$PIDS/namespace.pid" "sleep"; }
in_ns() {
  local holder; holder=$(holder_pid) || fail "the cluster is not up (scripts/k8s/cluster.sh up)"
  nsenter -t "$holder" -n -m --wd="$PWD" -- env KUBECONFIG="$ADMIN_KUBECONFIG" "$@"
}
kctl() { in_ns "$K8S_BIN/kubectl" "$@"; }
# The same as the script's last act: the command replaces this shell (nsenter and env exec),
# so a signal to the script's pid reaches it (a port-forward or client a test stops).
exec_in_ns() {
  local holder; holder=$(holder_pid) || fail "the cluster is not up (scripts/k8s/cluster.sh up)"
  exec nsenter -t "$holder" -n -m --wd="$PWD" -- env KUBECONFIG="$ADMIN_KUBECONFIG" "$@"
}

# Succeeds when "$@" succeeds and prints something.
nonempty() { local out; out=$("$@") && [ -n "$out" ]; }

# Poll "$@" until it succeeds, at most $1 seconds; $2 says what we wait for.
wait_until() {
  local seconds=$1 what=$2; shift 2
  local deadline=$(( $(now) + seconds ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(now)" -ge "$deadline" ]; then
      fail "timed out after ${seconds}s waiting for $what (logs: $LOGS)"
    fi
    sleep 0.3
  done
}

# --- certificates ------------------------------------------------------------------------

sign() {  # name subject [extensions]: an EC key and a certificate signed by the lab CA
  local name=$1 subject=$2 ext=${3:-}
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$name.key" 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n%s\n' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

kubeconfig() {  # name user-cert
  cat >"$PKI/$1.kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster: {server: "https://$LAB_IP:$API_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$PKI/$2.crt", client-key: "$PKI/$2.key"}
contexts:
- name: lab
  context: {cluster: lab, user: $1}
current-context: lab
YAML
}

make_pki() {
  rm -rf "$PKI" && mkdir -p "$PKI" && chmod 700 "$PKI"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=taskevents-lab-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  sign apiserver "/CN=kube-apiserver" "extendedKeyUsage=serverAuth
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$LAB_IP,IP:10.96.0.1,IP:127.0.0.1"
  sign admin "/O=system:masters/CN=lab-admin" "extendedKeyUsage=clientAuth"
  sign kube-controller-manager "/CN=system:kube-controller-manager" "extendedKeyUsage=clientAuth"
  sign kube-scheduler "/CN=system:kube-scheduler" "extendedKeyUsage=clientAuth"
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  kubeconfig admin admin
  kubeconfig kube-controller-manager kube-controller-manager
  kubeconfig kube-scheduler kube-scheduler
}

# --- processes -----------------------------------------------------------------------------

# start NAME CMD...: run inside the namespace, output to $LOGS/NAME.log, pid to $PIDS/NAME.pid.
# nsenter (no --fork) and the commands it runs exec, so $! is the component's own pid.
start() {
  local name=$1; shift
  local holder; holder=$(holder_pid)
  nsenter -t "$holder" -n -m -- "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
}

alive_or_fail() {
  local name=$1
  live_pid "$PIDS/$name.pid" >/dev/null || fail "$name exited; the last lines of $LOGS/$name.log:
$(tail -n 15 "$LOGS/$name.log" 2>/dev/null)"
}

# wait_component NAME SECONDS WHAT CMD...: poll CMD, failing early when NAME died.
wait_component() {
  local name=$1 seconds=$2 what=$3; shift 3
  local deadline=$(( $(now) + seconds ))
  until "$@" >/dev/null 2>&1; do
    alive_or_fail "$name"
    [ "$(now)" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what (log: $LOGS/$name.log)"
    sleep 0.3
  done
}

namespace_created() {
  [ "$(readlink "/proc/$(cat "$PIDS/namespace.pid")/ns/net")" != "$(readlink /proc/self/ns/net)" ]
}

namespace_up() {
  # The holder keeps the namespaces alive; without --fork, unshare execs sleep inside them.
  unshare --net --mount --propagation private sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$PIDS/namespace.pid"
  wait_until 5 "the namespace" namespace_created
  readlink "/proc/$(cat "$PIDS/namespace.pid")/ns/net" >"$PIDS/netns"
  { cat /etc/hosts; echo
    echo "# the lab's Services (scripts/k8s/cluster.sh)"
    for name in kubernetes.default.svc kubernetes.default.svc.cluster.local \
                dapr-sentry.dapr-system.svc dapr-sentry.dapr-system.svc.cluster.local \
                dapr-api.dapr-system.svc dapr-api.dapr-system.svc.cluster.local; do
      echo "$LAB_IP $name"
    done
  } >"$STATE/hosts"
  in_ns sh -euc "
    ip link set lo up
    ip addr add $LAB_IP/32 dev lo
    ip route add local $POD_CIDR dev lo
    mount -t tmpfs -o mode=755 lab-run /run
    mount --bind '$STATE/hosts' /etc/hosts
  "
}

start_kubernetes() {
  start etcd "$K8S_BIN/etcd" --name lab --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster lab=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
  wait_component etcd 30 "etcd" in_ns bash -c 'exec 3<>/dev/tcp/127.0.0.1/2379'

  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --advertise-address "$LAB_IP" --bind-address 0.0.0.0 --secure-port "$API_PORT" \
    --etcd-servers http://127.0.0.1:2379 \
    --client-ca-file "$PKI/ca.crt" --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-cluster-ip-range "$SERVICE_CIDR" --authorization-mode Node,RBAC \
    --enable-aggregator-routing=true --allow-privileged=true --profiling=false \
    --kubelet-preferred-address-types InternalIP,Hostname
  wait_component kube-apiserver 90 "the API server's /readyz" kctl get --raw /readyz

  local component
  for component in kube-controller-manager kube-scheduler; do
    set -- --kubeconfig "$PKI/$component.kubeconfig" --authentication-kubeconfig "$PKI/$component.kubeconfig" \
      --authorization-kubeconfig "$PKI/$component.kubeconfig" --leader-elect=false --bind-address 127.0.0.1
    if [ "$component" = kube-controller-manager ]; then
      # Controllers act as their own service accounts, so the Dapr injector accepts the pods
      # they create (it admits only controller accounts and system:masters).
      set -- "$@" --use-service-account-credentials=true --service-account-private-key-file "$PKI/sa.key" \
        --root-ca-file "$PKI/ca.crt" --cluster-signing-cert-file "$PKI/ca.crt" --cluster-signing-key-file "$PKI/ca.key" \
        --horizontal-pod-autoscaler-sync-period 2s
    fi
    start "$component" "$K8S_BIN/$component" "$@"
  done

  start kwok "$K8S_BIN/kwok" --kubeconfig "$ADMIN_KUBECONFIG" --config "$KWOK_STAGES" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip "$LAB_IP" --cidr "10.245.0.1/16" --server-address 127.0.0.1:10247 \
    --node-lease-duration-seconds 40
  kctl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $NODE_NAME
  annotations: {kwok.x-k8s.io/node: fake}
  labels:
    kubernetes.io/hostname: $NODE_NAME
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
YAML
  wait_component kwok 60 "node $NODE_NAME Ready" \
    kctl wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  # The controllers' accounts (kube-controller-manager creates them) and a default namespace account.
  wait_component kube-controller-manager 60 "the controllers' service accounts" \
    kctl -n kube-system get serviceaccount replicaset-controller job-controller statefulset-controller
  wait_component kube-controller-manager 60 "the default service account" kctl -n default get serviceaccount default
}

# --- Dapr ----------------------------------------------------------------------------------

DAPR_TEMPLATES=(
  charts/dapr_rbac/templates/injector.yaml charts/dapr_rbac/templates/operator.yaml
  charts/dapr_rbac/templates/sentry.yaml charts/dapr_rbac/templates/secret-reader.yaml
  charts/dapr_config/templates/dapr_default_config.yaml
  charts/dapr_sentry/templates/dapr_sentry_deployment.yaml charts/dapr_sentry/templates/dapr_sentry_service.yaml
  charts/dapr_operator/templates/dapr_operator_deployment.yaml charts/dapr_operator/templates/dapr_operator_service.yaml
  charts/dapr_sidecar_injector/templates/dapr_sidecar_injector_deployment.yaml
  charts/dapr_sidecar_injector/templates/dapr_sidecar_injector_service.yaml
  charts/dapr_sidecar_injector/templates/dapr_sidecar_injector_webhook_config.yaml
)

# Run the single container of a Dapr control-plane pod as a process: its command, args and
# environment from the pod (as Dapr's chart made it), its volumes mounted at their paths in
# a mount namespace of its own (podrun.py writes them like a kubelet would), and per-process
# ports where the chart's defaults would collide in one network namespace.
run_pod() {
  local name=$1 label=$2; shift 2
  local pod
  pod=$(kctl -n dapr-system get pods -l "app=$label" -o jsonpath='{.items[0].metadata.name}')
  [ -n "$pod" ] || fail "no pod for $label in dapr-system"
  local dir="$STATE/pods/$pod"
  mkdir -p "$dir"
  in_ns "$PYTHON" "$here/podrun.py" --namespace dapr-system --pod "$pod" --dir "$dir" \
    --bin-dir "$DAPR_BIN" --api-server "$LAB_IP:$API_PORT" --kubectl "$K8S_BIN/kubectl" -- "$@" \
    >"$dir/run.sh" || fail "could not prepare pod $pod (see above)"
  start "$name" unshare --mount --propagation private sh "$dir/run.sh"
}

start_dapr() {
  local chart="$DAPR_DIR/chart"
  kctl apply --server-side --force-conflicts -f "$chart/crds/" >/dev/null
  kctl wait --for=condition=Established crd --all --timeout=60s >/dev/null
  kctl create namespace dapr-system >/dev/null
  local show=() t
  for t in "${DAPR_TEMPLATES[@]}"; do show+=(--show-only "$t"); done
  # global.tag: the daprd image the injector puts into pods; the chart's default is "edge".
  # Sentry's Service targets the port the process listens on (443, below), so sidecars on
  # the real node reach it through kube-proxy as in a cluster. No placement and scheduler
  # (actors, workflows, jobs): the services use pub/sub, state and invocation only, as in
  # `make run`; with them on, sidecars stay unready until they answer.
  "$HELM" template dapr "$chart" --namespace dapr-system --set global.tag="$DAPR_VERSION" \
    --set dapr_sentry.ports.targetPort=443 --set global.actors.enabled=false \
    --set global.scheduler.enabled=false "${show[@]}" \
    >"$STATE/dapr-control-plane.yaml"
  kctl apply -f "$STATE/dapr-control-plane.yaml" >/dev/null
  wait_until 60 "Dapr's control-plane pods Running on $NODE_NAME" \
    kctl -n dapr-system wait --for=condition=Ready pod -l 'app in (dapr-sentry,dapr-operator,dapr-sidecar-injector)' --timeout=1s
  [ "$(kctl -n dapr-system get pods -o name | wc -l)" -eq 3 ] || fail "expected 3 Dapr control-plane pods"

  # Sentry listens where its Service's name (in /etc/hosts) and port point.
  run_pod sentry dapr-sentry --port 443 --healthz-port 28080 --metrics-port 29090
  wait_component sentry 60 "Sentry's trust bundle" \
    nonempty kctl -n dapr-system get configmap dapr-trust-bundle -o 'jsonpath={.data.ca\.crt}'
  run_pod operator dapr-operator --healthz-port 28081 --metrics-port 29091
  run_pod injector dapr-sidecar-injector --healthz-port 28082 --metrics-port 29092
  # Ready: the injector put its CA into its webhook, the operator its own into the
  # Subscription CRD's conversion webhook.
  wait_component injector 90 "the injector's webhook CA" \
    nonempty kctl get mutatingwebhookconfiguration dapr-sidecar-injector -o 'jsonpath={.webhooks[0].clientConfig.caBundle}'
  wait_component operator 90 "the operator's conversion webhook" \
    nonempty kctl get crd subscriptions.dapr.io -o 'jsonpath={.spec.conversion.webhook.clientConfig.caBundle}'
}

# The node half (kubelet, containerd): node_up, node_cleanup.
source "$here/node.sh"

# --- commands ------------------------------------------------------------------------------

cmd_up() {
  if holder_pid >/dev/null; then
    info "the cluster is already up (scripts/k8s/cluster.sh down stops it)"
    return
  fi
  [ "$(id -u)" -eq 0 ] || fail "the lab cluster needs root (network and mount namespaces)"
  command -v openssl >/dev/null || fail "openssl is needed for the cluster's certificates"
  bash "$here/build.sh" >/dev/null
  HELM=$(bash "$here/../helm.sh")
  cmd_down quiet
  rm -rf "$LOGS" && mkdir -p "$STATE" "$LOGS" "$PIDS"
  local start_time; start_time=$(now)
  # Whatever fails from here on leaves nothing running.
  trap 'status=$?; if [ $status -ne 0 ]; then info "start failed; stopping what was started"; cmd_down quiet; fi' EXIT
  step "Starting the lab cluster (Kubernetes $K8S_VERSION, Dapr $DAPR_VERSION) in a private namespace"
  info "logs: $LOGS"
  make_pki
  namespace_up
  start_kubernetes
  info "control plane ready after $(since "$start_time")"
  start_dapr
  trap - EXIT
  info "Dapr's control plane ready after $(since "$start_time")"
  info "kubectl: scripts/k8s/cluster.sh kubectl get pods -A"
}

netns_processes() {
  local inode pid
  inode=$(cat "$PIDS/netns" 2>/dev/null) || return 0
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$inode" ] && echo "$pid"
  done
}

# Running, and not a zombie waiting for PID 1 (here a slow reaper) to collect it.
running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# SIGTERM to all the given pids at once, SIGKILL to those still running after $1 seconds.
stop_all() {
  local seconds=$1; shift
  [ "$#" -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null || true
  local deadline=$(( $(now) + seconds )) pid left
  while :; do
    left=()
    for pid in "$@"; do running "$pid" && left+=("$pid"); done
    [ "${#left[@]}" -gt 0 ] || return 0
    if [ "$(now)" -ge "$deadline" ]; then
      info "still running after ${seconds}s, killing: ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      return 0
    fi
    sleep 0.1
  done
}

cmd_down() {
  local quiet=${1:-}
  [ -d "$PIDS" ] || { [ -n "$quiet" ] || info "the cluster is not up"; return 0; }
  [ -n "$quiet" ] || step "Stopping the lab cluster"
  local holder etcd pid others=()
  holder=$(cat "$PIDS/namespace.pid" 2>/dev/null || true)
  etcd=$(live_pid "$PIDS/etcd.pid" || true)
  # Everything inside the namespace (the components, and any kubectl or helm a test left)
  # at once, then etcd: an API server whose etcd is gone does not exit on SIGTERM.
  for pid in $(netns_processes); do
    [ "$pid" = "$holder" ] || [ "$pid" = "$etcd" ] || others+=("$pid")
  done
  stop_all 20 "${others[@]}"
  if [ -n "$etcd" ]; then stop_all 20 "$etcd"; fi
  if [ -n "$holder" ] && running "$holder"; then stop_all 5 "$holder"; fi
  local left=()
  for pid in $(netns_processes); do running "$pid" && left+=("$pid"); done
  [ "${#left[@]}" -eq 0 ] || fail "processes are still in the lab namespace: ${left[*]}"
  node_cleanup
  rm -rf "$STATE"
  [ -n "$quiet" ] || info "stopped; nothing of the lab is left"
}

cmd_status() {
  local name pid
  holder_pid >/dev/null || { echo "down"; return 1; }
  for name in "${COMPONENTS[@]}"; do
    if pid=$(live_pid "$PIDS/$name.pid"); then echo "$name running (pid $pid)"; else echo "$name not running"; fi
  done
}

case "${1:-}" in
  up) cmd_up ;;
  node-up) node_up ;;
  services-up) services_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubectl) shift; exec_in_ns "$K8S_BIN/kubectl" "$@" ;;
  exec) shift; exec_in_ns "$@" ;;
  *) echo "usage: $0 up|node-up|services-up|down|status|kubectl ARGS|exec CMD ARGS" >&2; exit 2 ;;
esac
