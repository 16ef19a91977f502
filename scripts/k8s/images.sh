#!/usr/bin/env bash
# Build the four services' images from the project's one Dockerfile with buildah (Debian's), without
# Docker or a registry, into $TASKEVENTS_CACHE/k8s/images (OCI archives that
# `cluster.sh node-up` imports into the lab node's containerd):
#
#   python:3.11-slim-bookworm   stand-in made by debootstrap (Debian's python3.11; the host's
#                               CA bundle as SSL_CERT_FILE, since TLS to PyPI is intercepted here)
#   ghcr.io/astral-sh/uv:0.13.9 stand-in holding the uv binary the Makefile installs
#   taskevents/<app-id>:dev     `buildah bud` of the root Dockerfile, unchanged, with
#                               --build-arg SERVICE=<app-id> PORT=<port>, --pull=never
#
# Built once; `images.sh` again rebuilds only when what the Dockerfile copies changed (then
# with buildah's layer cache). Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/../lib.sh"
source "$here/versions.sh"

ROOT="$(cd "$here/../.." && pwd)"
IMAGES="$TASKEVENTS_CACHE/k8s/images"
UV_BIN="$TASKEVENTS_CACHE/uv-0.13.9/bin/uv"
APP_IDS=(notification-service recurring-task-service audit-log-service websocket-service)
declare -A PORTS=([notification-service]=8001 [recurring-task-service]=8002
                  [audit-log-service]=8003 [websocket-service]=8004)
PACKAGES=(buildah debootstrap)
mkdir -p "$IMAGES"
B=(buildah --root "$IMAGES/storage" --runroot "$IMAGES/run" --storage-driver overlay)

packages() {
  local missing=() package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  step "Installing ${missing[*]} (Debian packages, once)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"; }; } \
    >"$IMAGES/apt.log" 2>&1 || fail "apt-get install ${missing[*]} failed; see $IMAGES/apt.log"
}

has_image() { "${B[@]}" images -q "$1" 2>/dev/null | grep -q .; }

python_base() {
  local name=docker.io/library/python:3.11-slim-bookworm
  has_image "$name" && return 0
  if [ ! -d "$IMAGES/python-rootfs" ]; then
    step "debootstrap: a Debian bookworm root with python3.11 (~1-2 min; log $IMAGES/debootstrap.log)"
    rm -rf "$IMAGES/python-rootfs.tmp"
    run_logged "$IMAGES/debootstrap.log" debootstrap --variant=minbase --include=python3.11,passwd,ca-certificates \
      bookworm "$IMAGES/python-rootfs.tmp" http://deb.debian.org/debian || fail "debootstrap failed; see $IMAGES/debootstrap.log"
    rm -rf "$IMAGES/python-rootfs.tmp/var/cache/apt/archives/"*.deb
    mv "$IMAGES/python-rootfs.tmp" "$IMAGES/python-rootfs"
  fi
  step "Image $name (stand-in)"
  cp /etc/ssl/certs/ca-certificates.crt "$IMAGES/python-rootfs/etc/ssl/certs/host-ca-certificates.crt"
  tar -C "$IMAGES/python-rootfs" -cf "$IMAGES/python-rootfs.tar" .
  local ctr; ctr=$("${B[@]}" from scratch)
  "${B[@]}" add "$ctr" "$IMAGES/python-rootfs.tar" / >/dev/null
  "${B[@]}" config --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/host-ca-certificates.crt --cmd python3.11 "$ctr"
  "${B[@]}" commit -q "$ctr" "$name" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  rm -f "$IMAGES/python-rootfs.tar"
}

uv_image() {
  local name=ghcr.io/astral-sh/uv:0.13.9
  has_image "$name" && return 0
  [ -x "$UV_BIN" ] || fail "uv 0.13.9 is missing at $UV_BIN (make deps installs it)"
  step "Image $name (stand-in: the uv binary from $UV_BIN)"
  local ctr; ctr=$("${B[@]}" from scratch)
  "${B[@]}" copy "$ctr" "$UV_BIN" /uv >/dev/null
  "${B[@]}" commit -q "$ctr" "$name" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
}

# A digest of what the Dockerfile copies (the workspace's manifests and lock, the library, the
# services; not what .dockerignore leaves out): unchanged, the image is not built again.
context_digest() {
  (cd "$ROOT" && find Dockerfile pyproject.toml uv.lock libs/taskevents cli/pyproject.toml "${APP_IDS[@]}" -type f \
      ! -path '*/__pycache__/*' ! -path '*/.venv/*' ! -name '*.pyc' ! -path '*/.mypy_cache/*' \
      ! -path '*/.ruff_cache/*' ! -path '*/.pytest_cache/*' -print0 \
    | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
}

service_image() {
  local app_id=$1 name="docker.io/taskevents/$1:dev" log="$IMAGES/build-$1.log" start; start=$(now)
  local digest; digest=$(context_digest)
  if [ -f "$IMAGES/$app_id.tar" ] && [ "$(cat "$IMAGES/$app_id.digest" 2>/dev/null)" = "$digest" ]; then
    info "$name is current: $IMAGES/$app_id.tar"
    return 0
  fi
  local port=${PORTS[$app_id]}
  step "buildah bud --build-arg SERVICE=$app_id --build-arg PORT=$port -t $name (log $log)"
  (cd "$ROOT" && run_logged "$log" "${B[@]}" bud --pull=never --layers --network host \
      --isolation oci --runtime runc --build-arg "SERVICE=$app_id" --build-arg "PORT=$port" \
      -f Dockerfile -t "$name" .) \
    || fail "building $app_id's image failed; the last lines of $log:
$(tail -n 15 "$log")"
  rm -f "$IMAGES/$app_id.tar"
  "${B[@]}" push -q "$name" "oci-archive:$IMAGES/$app_id.tar:$name" >/dev/null
  echo "$digest" >"$IMAGES/$app_id.digest"
  info "built $name in $(since "$start")"
}

packages
python_base
uv_image
for app_id in "${@:-${APP_IDS[@]}}"; do service_image "$app_id"; done
"${B[@]}" rm --all >/dev/null 2>&1 || true
"${B[@]}" umount --all >/dev/null 2>&1 || true
echo "$IMAGES"
