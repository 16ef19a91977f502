#!/usr/bin/env bash
# Dapr's Sentry in self-hosted mode: the certificate authority that gives every local
# sidecar its mTLS identity (spiffe://public/ns/default/<app-id>), as the control plane's
# Sentry does on Kubernetes. Without it no sidecar started with --enable-mtls can start,
# and no daprd without a certificate it signed can invoke another.
#
#   sentry.sh start    start it (if not running) and wait until it accepts connections
#   sentry.sh stop     stop the one we started
#   sentry.sh status   one line
#   sentry.sh env      print the daprd settings (shell assignments): SENTRY_ADDRESS and
#                      DAPR_TRUST_ANCHORS, the root certificate every sidecar trusts
#
# Environment:
#   SENTRY_PORT          gRPC port on 127.0.0.1 (default 50100; daprd's default 50001 is the
#                        CLI sidecar's gRPC port here)
#   SENTRY_HEALTHZ_PORT  health port (default 50101; Sentry's metrics are off locally)
#
# State: $TASKEVENTS_STATE/sentry/{credentials/, sentry.log, sentry.pid}. The first start
# makes a self-signed root and issuer in credentials/ (ca.crt, issuer.crt, issuer.key, valid
# one year); later starts reuse them, so running sidecars keep trusting the root. Delete the
# directory (`stack.sh clean`) to rotate them.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
SENTRY_PORT="${SENTRY_PORT:-50100}"
SENTRY_HEALTHZ_PORT="${SENTRY_HEALTHZ_PORT:-50101}"
STATE="$TASKEVENTS_STATE/sentry"
CREDENTIALS="$STATE/credentials"
LOG="$STATE/sentry.log"
PIDFILE="$STATE/sentry.pid"
# Workload certificate lifetime and clock skew come from the same Configuration the
# sidecars use (spec.mtls), as the chart's Sentry reads the control plane's.
CONFIG="$HERE/../dapr-components/configuration.yaml"

cmd_start() {
  local pid start bin
  if pid=$(live_pid "$PIDFILE" sentry); then
    info "Sentry already running (pid $pid) on 127.0.0.1:$SENTRY_PORT"
    return
  fi
  require_free_ports "a Sentry" "SENTRY_PORT / SENTRY_HEALTHZ_PORT" "$SENTRY_PORT" "$SENTRY_HEALTHZ_PORT"
  bin="$(bash "$HERE/dapr-runtime.sh")/sentry"
  [ -x "$bin" ] || fail "no sentry in $(dirname "$bin"): a 'dapr init' installation without it?
       Build ours: remove that installation or set DAPR_RUNTIME_PATH, then run 'make dapr'."
  mkdir -p "$STATE" "$CREDENTIALS"
  chmod 700 "$STATE" "$CREDENTIALS"
  start=$(now)
  step "Starting Dapr Sentry on 127.0.0.1:$SENTRY_PORT (credentials in $CREDENTIALS)"
  info "log: $LOG"
  setsid "$bin" --mode standalone \
    --config "$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")" \
    --issuer-credentials "$CREDENTIALS" \
    --listen-address 127.0.0.1 --port "$SENTRY_PORT" \
    --healthz-listen-address 127.0.0.1 --healthz-port "$SENTRY_HEALTHZ_PORT" \
    --enable-metrics=false \
    </dev/null >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local deadline=$(( $(now) + 30 ))
  until port_open 127.0.0.1 "$SENTRY_PORT" && [ -s "$CREDENTIALS/ca.crt" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      fail "Sentry exited during start-up; the end of $LOG:
$(tail -n 20 "$LOG")"
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      fail "Sentry (pid $pid) did not open port $SENTRY_PORT within 30s; the end of $LOG:
$(tail -n 20 "$LOG")"
    fi
    sleep 0.2
  done
  info "Sentry up (pid $pid), took $(since "$start")"
}

cmd_stop() {
  local pid
  if pid=$(live_pid "$PIDFILE" sentry); then
    step "Stopping Dapr Sentry (pid $pid)"
    stop_pid "$pid" 10
  else
    info "Sentry not running"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  if pid=$(live_pid "$PIDFILE" sentry); then
    echo "sentry    running   127.0.0.1:$SENTRY_PORT, trust anchors $CREDENTIALS/ca.crt (pid $pid)"
  else
    echo "sentry    stopped"; return 1
  fi
}

cmd_env() {
  [ -s "$CREDENTIALS/ca.crt" ] || fail "no trust anchors yet in $CREDENTIALS: run 'scripts/stack.sh up'"
  printf 'SENTRY_ADDRESS=%q\n' "127.0.0.1:$SENTRY_PORT"
  printf 'DAPR_TRUST_ANCHORS=%q\n' "$(cat "$CREDENTIALS/ca.crt")"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) fail "usage: $0 start | stop | status | env" ;;
esac
