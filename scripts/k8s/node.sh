# shellcheck shell=bash
# The node half of the lab cluster, sourced by cluster.sh (`cluster.sh node-up`): a real
# kubelet with containerd, runc and the CNI bridge plugin (Debian's packages), inside the
# lab's network and mount namespace, registered as node lab-node (tainted, so only pods
# that ask for it land there), with two local images made from busybox-static by umoci:
# the pod sandbox (registry.k8s.io/pause:3.10) and docker.io/library/busybox:lab.
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
  tar -C "$NODE/oci-pause" -cf "$NODE/pause.tar" .
  tar -C "$NODE/oci-busybox" -cf "$NODE/busybox.tar" .
  in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --base-name registry.k8s.io/pause "$NODE/pause.tar" >/dev/null
  in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import --base-name docker.io/library/busybox "$NODE/busybox.tar" >/dev/null
  # The services' images, when scripts/k8s/images.sh has built them.
  local archive
  for archive in "$TASKEVENTS_CACHE/k8s/images/"*-service.tar; do
    [ -f "$archive" ] || continue
    in_ns ctr --address "$CONTAINERD_SOCKET" -n k8s.io images import "$archive" >/dev/null \
      || fail "could not import $archive into the node's containerd"
  done
}

node_config() {
  mkdir -p "$NODE/cni" "$NODE/cni-ipam" "$NODE/kubelet-root" "$NODE/pod-logs"
  cat >"$NODE/cni/10-lab.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "lab", "plugins": [
  {"type": "bridge", "bridge": "labcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE/cni-ipam", "ranges": [[{"subnet": "$NODE_POD_CIDR"}]]}},
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
