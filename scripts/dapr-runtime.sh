#!/usr/bin/env bash
# Provide the Dapr runtime: daprd, placement, scheduler and sentry (the certificate
# authority that gives every sidecar its mTLS identity; scripts/sentry.sh runs it).
#
# 1. An existing `dapr init` installation (~/.dapr/bin/daprd not made by us) is used as is.
# 2. Otherwise the pinned release is built from its Go module into
#    $TASKEVENTS_CACHE/dapr/<version>/bin (once per version) and linked into ~/.dapr/bin,
#    where `dapr run` looks for it, together with the config.yaml daprd insists on.
#
# The dapr CLI is not built: no release of github.com/dapr/cli from 1.13 on is served by
# the Go module proxy. `make run` uses `dapr run -f dapr.yaml` when a CLI is installed and
# the bundled runner (python -m taskevents_cli.devrun) otherwise.
#
# Prints the bin directory holding daprd on stdout; progress goes to stderr.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# The newest stable release whose whole build graph the Go module proxy serves: v1.18.3
# needs durabletask-go v0.12.4 and an avro release the proxy here refuses (403).
DAPR_VERSION="${DAPR_VERSION:-1.18.2}"
DAPR_HOME_DIR="${DAPR_RUNTIME_PATH:-$HOME}/.dapr"
MARKER="$DAPR_HOME_DIR/.installed-by-taskevents"
BUILD_DIR="$TASKEVENTS_CACHE/dapr/$DAPR_VERSION"
LOG="$BUILD_DIR/build.log"
BINARIES="daprd placement scheduler sentry"

version_of() { "$1" --version 2>/dev/null | head -n 1 | tr -d '[:space:]'; }

existing_install() {
  [ -x "$DAPR_HOME_DIR/bin/daprd" ] && [ ! -f "$MARKER" ]
}

# The binaries of $BINARIES not yet built for this version: a cache made before sentry
# joined the list builds only sentry (compiled packages are shared through Go's build cache).
missing_binaries() {
  local bin missing=""
  for bin in $BINARIES; do
    if [ ! -x "$BUILD_DIR/bin/$bin" ] \
       || { [ "$bin" = daprd ] && [ "$(version_of "$BUILD_DIR/bin/daprd")" != "$DAPR_VERSION" ]; }; then
      missing="$missing $bin"
    fi
  done
  echo "${missing# }"
}

build_runtime() {
  mkdir -p "$BUILD_DIR/bin"
  local missing
  missing=$(missing_binaries)
  if [ -z "$missing" ]; then
    info "Dapr $DAPR_VERSION ($BINARIES) already built in $BUILD_DIR/bin"
    return
  fi
  local COMMANDS="" bin
  for bin in $missing; do COMMANDS="$COMMANDS ./cmd/$bin"; done
  COMMANDS=${COMMANDS# }
  command -v go >/dev/null || fail "Go is needed to build the Dapr runtime (or run 'dapr init --slim' yourself)."
  : >"$LOG"
  step "Building the Dapr runtime $DAPR_VERSION ($missing) from the Go module (first time only; 10-25 min on 2 cores)"
  info "log: $LOG"
  local start; start=$(now)

  info "[1/3] fetching github.com/dapr/dapr@v$DAPR_VERSION"
  local src
  src=$(cd "$BUILD_DIR" && GOFLAGS=-mod=mod go mod download -json "github.com/dapr/dapr@v$DAPR_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -d "$src" ] || fail "could not fetch github.com/dapr/dapr@v$DAPR_VERSION from the Go module proxy (see $LOG)"
  # The module declares replace directives, so `go install pkg@version` refuses it:
  # build inside a writable copy of the module, as its own Makefile does.
  rm -rf "$BUILD_DIR/src" && cp -r "$src" "$BUILD_DIR/src" && chmod -R u+w "$BUILD_DIR/src"

  # Only the modules these commands import: `go mod download` would also fetch
  # modules of components outside the stable set, some of which the proxy lacks.
  info "[2/3] downloading the modules $missing import"
  local total
  (cd "$BUILD_DIR/src" && run_logged "$LOG" sh -c \
      "go list -deps -tags stablecomponents $COMMANDS >'$BUILD_DIR/packages.txt'") \
    || fail "module download failed; see $LOG"
  total=$(wc -l <"$BUILD_DIR/packages.txt")
  local compile_log="$BUILD_DIR/compile.log"
  : >"$compile_log"

  info "[3/3] compiling with -tags stablecomponents (progress: packages compiled / total)"
  local ldflags="-s -w -X github.com/dapr/dapr/pkg/buildinfo.version=$DAPR_VERSION \
-X github.com/dapr/dapr/pkg/buildinfo.gitversion=v$DAPR_VERSION \
-X github.com/dapr/dapr/pkg/buildinfo.gitcommit=v$DAPR_VERSION \
-X github.com/dapr/kit/logger.DaprVersion=$DAPR_VERSION"
  (
    cd "$BUILD_DIR/src"
    CGO_ENABLED=0 go build -v -trimpath -tags stablecomponents -ldflags "$ldflags" \
      -o "$BUILD_DIR/bin/" $COMMANDS >"$compile_log" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 15
      # `go build -v` names each package as it compiles it; linking comes last.
      done_count=$(grep -vc '^go: ' "$compile_log" || true)
      info "      $(( $(now) - start ))s: $done_count/$total packages compiled"
    done
    wait "$pid"
  ) || fail "compiling the Dapr runtime failed; the last lines of $BUILD_DIR/compile.log:
$(tail -n 20 "$BUILD_DIR/compile.log")"
  rm -rf "$BUILD_DIR/src"
  info "built $missing $DAPR_VERSION in $(( $(now) - start ))s"
}

install_runtime() {
  mkdir -p "$DAPR_HOME_DIR/bin" "$DAPR_HOME_DIR/components"
  for bin in $BINARIES; do
    ln -sfn "$BUILD_DIR/bin/$bin" "$DAPR_HOME_DIR/bin/$bin"
  done
  echo "$DAPR_VERSION" >"$MARKER"
  if [ ! -f "$DAPR_HOME_DIR/config.yaml" ]; then
    # daprd refuses to start when its configuration file is missing.
    cat >"$DAPR_HOME_DIR/config.yaml" <<'YAML'
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprConfig
spec: {}
YAML
  fi
}

existing_install || hold_lock "$TASKEVENTS_CACHE/dapr/$DAPR_VERSION.lock"
if existing_install; then
  info "using the existing Dapr installation in $DAPR_HOME_DIR ($(version_of "$DAPR_HOME_DIR/bin/daprd"))"
else
  build_runtime
  install_runtime
  info "Dapr $DAPR_VERSION installed in $DAPR_HOME_DIR/bin"
fi
echo "$DAPR_HOME_DIR/bin"
