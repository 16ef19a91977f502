# shellcheck shell=bash
# The pinned versions of the Kubernetes test tier. Sourced by build.sh and cluster.sh.
# Bumping one rebuilds it into a new cache directory; nothing else changes.
K8S_VERSION="${K8S_VERSION:-1.36.3}"
# k8s.io/kubernetes requires its staging modules as v0.0.0; they are published as v0.<minor>.<patch>.
K8S_STAGING_VERSION="0.${K8S_VERSION#1.}"
ETCD_VERSION="${ETCD_VERSION:-3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
# The same release as the local daprd (scripts/dapr-runtime.sh), so compiled packages are shared.
DAPR_VERSION="${DAPR_VERSION:-1.18.2}"
# The cluster DNS of the lab node (scripts/k8s/node.sh).
COREDNS_VERSION="${COREDNS_VERSION:-1.14.7}"
