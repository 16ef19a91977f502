#!/usr/bin/env bash
# Jaeger v2 (the trace store of `make run` and the tests) in the background, built from its
# Go module by scripts/go-tools.sh; configuration in scripts/jaeger/config.yaml (in-memory
# storage, OTLP and the query API on loopback).
#
#   jaeger.sh start    start it (if not running) and wait until its query API answers
#   jaeger.sh stop     stop the one we started
#   jaeger.sh status   one line
#
# Environment: JAEGER_OTLP_GRPC_PORT (4317), JAEGER_OTLP_HTTP_PORT (4318), JAEGER_UI_PORT
# (16686: the query API /api/traces and the UI), JAEGER_QUERY_GRPC_PORT (16685),
# JAEGER_HEALTH_PORT (13133), JAEGER_MAX_TRACES (10000 kept in memory).
# State: $TASKEVENTS_STATE/jaeger/{jaeger.log, jaeger.pid}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
JAEGER_OTLP_GRPC_PORT="${JAEGER_OTLP_GRPC_PORT:-4317}"
JAEGER_UI_PORT="${JAEGER_UI_PORT:-16686}"
export JAEGER_OTLP_GRPC_PORT JAEGER_UI_PORT
STATE="$TASKEVENTS_STATE/jaeger"
LOG="$STATE/jaeger.log"
PIDFILE="$STATE/jaeger.pid"
PATTERN="jaeger/config.yaml"

cmd_start() {
  local pid start binary
  if pid=$(live_pid "$PIDFILE" "$PATTERN"); then
    info "Jaeger already running (pid $pid): OTLP 127.0.0.1:$JAEGER_OTLP_GRPC_PORT, query http://127.0.0.1:$JAEGER_UI_PORT/"
    return
  fi
  require_free_ports "a Jaeger" "JAEGER_OTLP_GRPC_PORT / JAEGER_UI_PORT" \
    "$JAEGER_OTLP_GRPC_PORT" "$JAEGER_UI_PORT"
  binary=$(bash "$HERE/go-tools.sh" jaeger)
  mkdir -p "$STATE"
  start=$(now)
  step "Starting Jaeger (OTLP 127.0.0.1:$JAEGER_OTLP_GRPC_PORT, query http://127.0.0.1:$JAEGER_UI_PORT/)"
  info "log: $LOG"
  setsid "$binary" --config "$HERE/jaeger/config.yaml" </dev/null >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local deadline=$(( $(now) + 30 ))
  until port_open 127.0.0.1 "$JAEGER_OTLP_GRPC_PORT" && port_open 127.0.0.1 "$JAEGER_UI_PORT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      fail "Jaeger exited during start-up; the end of $LOG:
$(tail -n 20 "$LOG")"
    fi
    [ "$(now)" -lt "$deadline" ] || fail "Jaeger (pid $pid) did not open its ports within 30s; see $LOG"
    sleep 0.2
  done
  info "Jaeger up (pid $pid), took $(since "$start")"
}

cmd_stop() {
  local pid
  if pid=$(live_pid "$PIDFILE" "$PATTERN"); then
    step "Stopping Jaeger (pid $pid)"
    stop_pid "$pid" 10
  else
    info "Jaeger not running"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  if pid=$(live_pid "$PIDFILE" "$PATTERN"); then
    echo "jaeger    running   OTLP 127.0.0.1:$JAEGER_OTLP_GRPC_PORT, query http://127.0.0.1:$JAEGER_UI_PORT/ (pid $pid)"
  else
    echo "jaeger    stopped"; return 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) fail "usage: $0 start | stop | status" ;;
esac
