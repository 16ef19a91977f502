# shellcheck shell=bash
# The node half of the lab cluster, sourced by cluster.sh (`cluster.sh node-up`): a real
# kubelet with containerd, runc and the CNI bridge plugin (Debian's packages), inside the
# lab's network and mount namespace, registered as node lab-node (tainted, so only pods
# that ask for it land there), with local images made by umoci: the pod sandbox
# (registry.k8s.io/pause:3.10) and docker.io/library/busybox:lab from busybox-static, the
# Dapr sidecar (ghcr.io/dapr/daprd) from the project's daprd; kube-proxy (iptables mode) and
# CoreDNS (on the lab's address, the kubelet's cluster DNS) make Services and their names work.
#
# Host state it touches, all undone by `cluster.sh down`: the packages (installed once, kept),
# cgroup directories under /sys/fs/cgroup/*/taskevents-lab (cgroups are not namespaced here).
# containerd's and runc's sockets and state live in the namespace's own /run; iptables
# rules, the bridge and ip_forward belong to the namespace's network.

NODE="$STATE/node"
NODE_PACKAGES=(runc containerd containernetworking-plugins umoci busybox-static)
LAB_NODE=lab-node
NODE_POD_CIDR=10.246.0.0/24
CGROUP_ROOT=taskevents-lab
CONTAINERD_SOCKET=/run/lab-containerd/containerd.sock

node_packages() {
  local missing=() package
  for package in "${NODE_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  step "Installing ${missing[*]} (Debian packages, once)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 \
    || { apt-get update >>"$LOGS/apt.log" 2>&1 \
         && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOGS/apt.log" 2>&1; } \
    || fail "apt-get install ${missing[*]} failed; see $LOGS/apt.log"
}

# An OCI image from busybox-static: $1 layout dir, $2 reference name, then umoci config args.
busybox_image() {
  local layout=$1 ref=$2; shift 2
  local rootfs="$NODE/rootfs"
  if [ ! -d "$rootfs" ]; then
    mkdir -p "$rootfs"/{bin,proc,sys,dev,tmp,etc}
    cp /bin/busybox "$rootfs/bin/busybox"
    local applet
    for applet in sh echo cat sleep ls ps id hostname wget httpd; do ln -sf busybox "$rootfs/bin/$applet"; done
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
  fi
  umoci init --layout "$layout"
  umoci new --image "$layout:$ref"
  umoci unpack --image "$layout:$ref" "$NODE/unpack-$ref" >/dev/null
  cp -a "$rootfs/." "$NODE/unpack-$ref/rootfs/"
  umoci repack --image "$layout:$ref" "$NODE/unpack-$ref"
  umoci config --image "$layout:$ref" --config.env PATH=/bin "$@"
  rm -rf "$NODE/unpack-$ref"
}

node_images() {
  busybox_image "$NODE/oci-pause" 3.10 --config.user 65534:65534 \
    --config.entrypoint /bin/sh --config.entrypoint -c \
    --config.entrypoint "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"
  busybox_image "$NODE/oci-busybox" lab --config.cmd /bin/sh
  daprd_image
  tar -C "$NODE/oci-pause" -cf "$NODE/pause.tar" .
  tar -C "$NODE/oci-busybox" -cf "$NODE/busybox.tar" .
  in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --base-name registry.k8s.io/pause "$NODE/pause.tar" >/dev/null
  in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --base-name docker.io/library/busybox "$NODE/busybox.tar" >/dev/null
  in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --base-name ghcr.io/dapr/daprd "$DAPRD_IMAGE" >/dev/null
  # The services' images, when scripts/k8s/images.sh has built them.
  local archive
  for archive in "$TASKEVENTS_CACHE/k8s/images/"*-service.tar; do
    [ -f "$archive" ] || continue
    in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import "$archive" >/dev/null \
      || fail "could not import $archive into the node's containerd"
  done
}

# The sidecar image the injector names (ghcr.io/dapr/daprd:<DAPR_VERSION>, Dapr's chart with
# global.tag) from the daprd the project builds (scripts/dapr-runtime.sh): the binary at
# /daprd, as in Dapr's own (distroless) image, run as its non-root user 65532. Packed once
# into the image cache, again only when that daprd changes.
DAPRD_IMAGE="$TASKEVENTS_CACHE/k8s/images/daprd-$DAPR_VERSION.tar"
daprd_image() {
  local daprd_bin layout="$NODE/oci-daprd" digest
  daprd_bin=$(bash "$here/../dapr-runtime.sh")/daprd
  [ -x "$daprd_bin" ] || fail "daprd is missing at $daprd_bin (scripts/dapr-runtime.sh)"
  digest=$(sha256sum "$daprd_bin" | cut -c1-64)
  [ -f "$DAPRD_IMAGE" ] && [ "$(cat "$DAPRD_IMAGE.digest" 2>/dev/null)" = "$digest" ] && return 0
  info "packing ghcr.io/dapr/daprd:$DAPR_VERSION from $daprd_bin (once)"
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$DAPR_VERSION"
  umoci unpack --image "$layout:$DAPR_VERSION" "$NODE/unpack-daprd" >/dev/null
  mkdir -p "$NODE/unpack-daprd/rootfs/etc" "$NODE/unpack-daprd/rootfs/tmp"
  cp "$daprd_bin" "$NODE/unpack-daprd/rootfs/daprd"
  printf 'root:x:0:0:root:/:/daprd\nnonroot:x:65532:65532:nonroot:/:/daprd\n' >"$NODE/unpack-daprd/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$NODE/unpack-daprd/rootfs/etc/group"
  umoci repack --image "$layout:$DAPR_VERSION" "$NODE/unpack-daprd"
  umoci config --image "$layout:$DAPR_VERSION" --config.user 65532:65532 --config.entrypoint /daprd
  rm -rf "$NODE/unpack-daprd"
  mkdir -p "$(dirname "$DAPRD_IMAGE")"
  tar -C "$layout" -cf "$DAPRD_IMAGE.tmp" . && mv "$DAPRD_IMAGE.tmp" "$DAPRD_IMAGE"
  echo "$digest" >"$DAPRD_IMAGE.digest"
  rm -rf "$layout"
}

node_config() {
  mkdir -p "$NODE/cni" "$NODE/cni-ipam" "$NODE/kubelet-root" "$NODE/pod-logs"
  cat >"$NODE/cni/10-lab.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "lab", "plugins": [
  {"type": "bridge", "bridge": "labcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE/cni-ipam", "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  cat >"$NODE/containerd.toml" <<TOML
version = 2
root = "$NODE/containerd-root"
state = "/run/lab-containerd/state"
[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  stream_server_port = "10011"
  # No CAP_SYS_RESOURCE here: negative oom_score_adj values are refused, so clamp them.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni"
TOML
  cat >"$NODE/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 (hybrid) here: kubelet 1.36 refuses it unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
imageServiceEndpoint: unix://$CONTAINERD_SOCKET
podLogsDir: $NODE/pod-logs
healthzBindAddress: 127.0.0.1
healthzPort: 10248
port: 10250
readOnlyPort: 0
failSwapOn: false
resolvConf: ""
# CoreDNS, on the lab's address (node_dns).
clusterDNS: [$LAB_IP]
clusterDomain: cluster.local
# Inside the lab's private network only.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
registerWithTaints:
- {key: taskevents.io/lab-node, value: "true", effect: NoSchedule}
YAML
  sign kubelet "/O=system:nodes/CN=system:node:$LAB_NODE" "extendedKeyUsage=clientAuth"
  kubeconfig kubelet kubelet
  # kube-proxy as the user Kubernetes' default RBAC binds to system:node-proxier.
  sign kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  kubeconfig kube-proxy kube-proxy
  cat >"$NODE/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
hostnameOverride: $LAB_NODE
clusterCIDR: $NODE_POD_CIDR
bindAddress: $LAB_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Pods reach Services whose endpoints are on their own bridge or in the lab's namespace
# (the control plane's processes): masquerade all Service traffic, so every reply comes
# back through the namespace's conntrack without br_netfilter.
iptables: {masqueradeAll: true}
# The host's conntrack table is not the namespace's to size.
conntrack: {maxPerCore: 0, min: 0}
YAML
  # CoreDNS as the cluster DNS, with the RBAC of CoreDNS's own deployment manifests.
  sign coredns "/CN=system:coredns" "extendedKeyUsage=clientAuth"
  kubeconfig coredns coredns
  cat >"$NODE/Corefile" <<COREFILE
.:53 {
    errors
    health 127.0.0.1:18080
    ready 127.0.0.1:18181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $PKI/coredns.kubeconfig lab
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loadbalance
}
COREFILE
}

node_dns_rbac() {
  kctl apply -f - >/dev/null <<YAML
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
YAML
}

# kubelet wants its cgroup root in every (v1) hierarchy before it starts.
node_cgroups() {
  local hierarchy
  # Written for cgroup v1 (hybrid) hosts like the CI machines, where /sys/fs/cgroup holds one
  # hierarchy per controller; on a cgroup v2 host those entries are cgroups themselves.
  [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] \
    || fail "the lab node supports cgroup v1 (hybrid) hosts only; this one has cgroup v2"
  for hierarchy in /sys/fs/cgroup/*/; do
    [ "$hierarchy" = /sys/fs/cgroup/unified/ ] && continue
    mkdir -p "$hierarchy$CGROUP_ROOT"
    if [ -f "${hierarchy}cpuset.cpus" ]; then
      cat "${hierarchy}cpuset.cpus" >"$hierarchy$CGROUP_ROOT/cpuset.cpus"
      cat "${hierarchy}cpuset.mems" >"$hierarchy$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

node_up() {
  holder_pid >/dev/null || fail "the cluster is not up (scripts/k8s/cluster.sh up)"
  node_packages
  bash "$here/build.sh" node >/dev/null
  COREDNS_BIN="$TASKEVENTS_CACHE/k8s/coredns-$COREDNS_VERSION/bin"
  local start_time; start_time=$(now)
  step "Starting the lab node: containerd, kubelet $K8S_VERSION"
  node_config
  node_cgroups
  start containerd containerd --config "$NODE/containerd.toml"
  wait_component containerd 30 "containerd" in_ns ctr --address "$CONTAINERD_SOCKET" version
  node_images
  start kubelet "$K8S_BIN/kubelet" --config "$NODE/kubelet.yaml" --kubeconfig "$PKI/kubelet.kubeconfig" \
    --root-dir "$NODE/kubelet-root" --hostname-override "$LAB_NODE" --node-ip "$LAB_IP" \
    --node-labels taskevents.io/lab-node=true
  wait_component kubelet 90 "node $LAB_NODE Ready" \
    kctl wait --for=condition=Ready "node/$LAB_NODE" --timeout=1s
  # Services and their names: kube-proxy (iptables rules in the lab's network) and CoreDNS.
  start kube-proxy "$K8S_BIN/kube-proxy" --config "$NODE/kube-proxy.yaml"
  node_dns_rbac
  start coredns "$COREDNS_BIN/coredns" -conf "$NODE/Corefile"
  wait_component kube-proxy 60 "kube-proxy's healthz" in_ns curl -fsS http://127.0.0.1:10256/healthz
  wait_component coredns 60 "CoreDNS ready" in_ns curl -fsS http://127.0.0.1:18181/ready
  info "node $LAB_NODE ready after $(since "$start_time") (logs: $LOGS/kubelet.log, $LOGS/containerd.log)"
}

# Processes in the node's cgroups: the pods' containers, which live in network namespaces of
# their own (so the lab namespace's scan does not see them).
node_processes() {
  grep -l ":/$CGROUP_ROOT/" /proc/[0-9]*/cgroup 2>/dev/null | cut -d/ -f3 || true
}

# After every process of the namespace is gone: the pods' containers, then the cgroups
# kubelet and runc made.
node_cleanup() {
  local pids=() pid hierarchy
  for pid in $(node_processes); do running "$pid" && pids+=("$pid"); done
  stop_all 10 "${pids[@]}"
  # A killed task leaves its cgroup only once reaped (by a slow PID 1 here): retry a while.
  wait_until 20 "the node's cgroups to go (/sys/fs/cgroup/*/$CGROUP_ROOT)" remove_node_cgroups
}

remove_node_cgroups() {
  local hierarchy left=0
  for hierarchy in /sys/fs/cgroup/*/; do
    if [ -d "$hierarchy$CGROUP_ROOT" ]; then
      find "$hierarchy$CGROUP_ROOT" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ ! -d "$hierarchy$CGROUP_ROOT" ] || left=1
    fi
  done
  [ "$left" -eq 0 ]
}

# The chart's external broker, database and mail server for the node's pods (`cluster.sh
# services-up`): the project's own scripts/kafka.sh, postgres.sh and smtp.sh, run inside the
# lab's namespace on its address (the pods reach it through their bridge's gateway), with
# state under the lab's. The reasons for these over in-chart images: docs/kubernetes.md.
SERVICES_STATE="$STATE/services"
services_up() {
  holder_pid >/dev/null || fail "the cluster is not up (scripts/k8s/cluster.sh up)"
  local start_time; start_time=$(now)
  step "Starting Kafka, Postgres and the SMTP sink on $LAB_IP inside the lab's namespace"
  mkdir -p "$SERVICES_STATE"
  local python="${VENV_PYTHON:-$here/../../.venv/bin/python}"
  [ -x "$python" ] || fail "the project's virtual environment is missing (make deps): $python"
  # Not the shared stack's servers the caller may point at: the lab's own, on their default ports.
  local env=(env -u DATABASE_URL -u KAFKA_BROKERS -u KAFKA_PORT -u KAFKA_CONTROLLER_PORT -u PGPORT
             -u SMTP_PORT -u MAILSINK_HTTP_PORT -u MAILSINK_DIR TASKEVENTS_STATE="$SERVICES_STATE" KAFKA_HOST="$LAB_IP" PG_HOST="$LAB_IP"
             SMTP_HOST="$LAB_IP" MAILSINK_REJECT= PYTHON="$python" KAFKA_HEAP_OPTS="-Xms128m -Xmx512m")
  in_ns "${env[@]}" bash "$here/../kafka.sh" start --no-wait >&2
  in_ns "${env[@]}" bash "$here/../postgres.sh" ensure >&2
  # The pods connect from their own range, with the role's password.
  local hba; hba="$SERVICES_STATE/postgres/data/pg_hba.conf"
  grep -q "$NODE_POD_CIDR" "$hba" || echo "host all all $NODE_POD_CIDR scram-sha-256" >>"$hba"
  in_ns "${env[@]}" bash "$here/../postgres.sh" start >&2
  in_ns "${env[@]}" bash "$here/../smtp.sh" start >&2
  in_ns "${env[@]}" bash "$here/../kafka.sh" wait >&2
  in_ns "${env[@]}" bash "$here/../kafka.sh" topics >&2
  info "Kafka $LAB_IP:9092, Postgres $LAB_IP:5432, SMTP $LAB_IP:1025 (mails in $SERVICES_STATE/mail) after $(since "$start_time")"
}
