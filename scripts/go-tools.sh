#!/usr/bin/env bash
# Provide the Go-built servers of the local stack from the tools module (tools/go.mod, whose
# `tool` directives pin them): Jaeger v2 (`jaeger`) and Mailpit (`mailpit`). Each is built
# once per tools/go.sum into $TASKEVENTS_CACHE/go-tools/<sum>/bin and never rebuilt.
#
# Usage: scripts/go-tools.sh NAME     build NAME when missing; print the binary's path on stdout
#
# Builds take /tmp/taskevents-go-build.lock (one Go build at a time on a shared machine).
# Progress goes to stderr.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MODULE_DIR="$(cd "$(dirname "$0")/../tools" && pwd)"
name=${1:-}
case "$name" in
  jaeger) package=github.com/jaegertracing/jaeger/cmd/jaeger; minutes="6-15" ;;
  mailpit) package=github.com/axllent/mailpit; minutes="2-5" ;;
  *) fail "usage: $0 jaeger | mailpit" ;;
esac
# The key is the files' content only: every checkout (worktree) of the same pins shares one build.
sum=$(cat "$MODULE_DIR/go.mod" "$MODULE_DIR/go.sum" | sha256sum | cut -c1-12)
BUILD_DIR="$TASKEVENTS_CACHE/go-tools/$sum"
BINARY="$BUILD_DIR/bin/$name"
LOG="$BUILD_DIR/$name.build.log"

build() {
  command -v go >/dev/null || fail "Go is needed to build $name (tools/go.mod)."
  mkdir -p "$BUILD_DIR/bin"
  : >"$LOG"
  local version start
  version=$(cd "$MODULE_DIR" && go list -m -f '{{.Version}}' "$(go list -f '{{.Module.Path}}' "$package")")
  step "Building $name $version from its Go module (first time only; $minutes min on 2 cores)"
  info "log: $LOG"
  start=$(now)
  info "[1/2] downloading the modules $name imports"
  (cd "$MODULE_DIR" && run_logged "$LOG" sh -c "go list -deps $package >'$BUILD_DIR/$name.packages'") \
    || fail "module download failed; see $LOG"
  local total; total=$(wc -l <"$BUILD_DIR/$name.packages")
  info "[2/2] compiling (progress: packages compiled / total)"
  (
    cd "$MODULE_DIR"
    CGO_ENABLED=0 go build -v -trimpath -ldflags "-s -w" -o "$BINARY.tmp" "$package" >>"$LOG" 2>&1 &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 15
      info "      $(( $(now) - start ))s: $(grep -vc '^go: ' "$LOG" || true)/$total packages compiled"
    done
    wait "$pid"
  ) || fail "compiling $name failed; the last lines of $LOG:
$(tail -n 20 "$LOG")"
  mv "$BINARY.tmp" "$BINARY"
  info "built $name $version in $(( $(now) - start ))s"
}

if [ ! -x "$BINARY" ]; then
  hold_lock /tmp/taskevents-go-build.lock
  [ -x "$BINARY" ] || build  # another set-up may have built it while we waited
fi
echo "$BINARY"
