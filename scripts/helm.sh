#!/usr/bin/env bash
# Provide Helm for `make test` and `make manifests`: built once per version from its Go
# module into $TASKEVENTS_CACHE/helm/<version>/bin and never rebuilt.
#
# Usage: scripts/helm.sh            build when missing; print the binary's path on stdout
#        scripts/helm.sh ARGS...    build when missing, then run `helm ARGS...`
#
# A `helm` already on PATH is not used: the chart is linted and rendered by one pinned
# version everywhere, so the generated k8s/ manifests do not change with the machine.
# Progress goes to stderr.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The newest release whose whole build graph the Go module proxy serves (checked with
# `go list -deps ./cmd/helm`; v4.3.1 builds with Go >= 1.26).
HELM_VERSION="${HELM_VERSION:-4.3.1}"
HELM_MODULE="helm.sh/helm/v${HELM_VERSION%%.*}"
BUILD_DIR="$TASKEVENTS_CACHE/helm/$HELM_VERSION"
HELM="$BUILD_DIR/bin/helm"
LOG="$BUILD_DIR/build.log"

built() {
  [ -x "$HELM" ] && "$HELM" version --template '{{.Version}}' 2>/dev/null | grep -qx "v$HELM_VERSION"
}

build_helm() {
  command -v go >/dev/null || fail "Go is needed to build Helm (or put a helm $HELM_VERSION binary at $HELM)."
  mkdir -p "$BUILD_DIR/bin"
  : >"$LOG"
  step "Building Helm $HELM_VERSION from the Go module (first time only; 3-8 min on 2 cores)"
  info "log: $LOG"
  local start; start=$(now)

  info "[1/3] fetching $HELM_MODULE@v$HELM_VERSION"
  local src
  src=$(cd "$BUILD_DIR" && GOFLAGS=-mod=mod go mod download -json "$HELM_MODULE@v$HELM_VERSION" 2>>"$LOG" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || fail "could not fetch $HELM_MODULE@v$HELM_VERSION from the Go module proxy (see $LOG)"
  # Build inside a writable copy, as Helm's own Makefile does, so that go.sum is honoured.
  rm -rf "$BUILD_DIR/src" && cp -r "$src" "$BUILD_DIR/src" && chmod -R u+w "$BUILD_DIR/src"

  info "[2/3] downloading the modules ./cmd/helm imports"
  (cd "$BUILD_DIR/src" && run_logged "$LOG" sh -c "GOFLAGS=-mod=mod go list -deps ./cmd/helm >'$BUILD_DIR/packages.txt'") \
    || fail "module download failed; see $LOG"
  local total; total=$(wc -l <"$BUILD_DIR/packages.txt")
  local compile_log="$BUILD_DIR/compile.log"
  : >"$compile_log"

  info "[3/3] compiling (progress: packages compiled / total)"
  local ldflags="-s -w -X $HELM_MODULE/internal/version.version=v$HELM_VERSION \
-X $HELM_MODULE/internal/version.gitTreeState=clean"
  (
    cd "$BUILD_DIR/src"
    GOFLAGS=-mod=mod CGO_ENABLED=0 go build -v -trimpath -ldflags "$ldflags" -o "$HELM.tmp" ./cmd/helm \
      >"$compile_log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 15
      done_count=$(grep -vc '^go: ' "$compile_log" || true)
      info "      $(( $(now) - start ))s: $done_count/$total packages compiled"
    done
    wait "$pid"
  ) || fail "compiling Helm failed; the last lines of $compile_log:
$(tail -n 20 "$compile_log")"
  mv "$HELM.tmp" "$HELM"
  rm -rf "$BUILD_DIR/src"
  info "built helm $HELM_VERSION in $(( $(now) - start ))s"
}

if ! built; then
  hold_lock "$BUILD_DIR.lock"
  built || build_helm  # another set-up may have built it while we waited
fi
if [ "$#" -eq 0 ]; then
  echo "$HELM"
else
  exec "$HELM" "$@"
fi
