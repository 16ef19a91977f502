#!/usr/bin/env bash
# The backing services of a local run or test session: Kafka, PostgreSQL, an SMTP sink,
# Dapr's Sentry (the certificate authority of the sidecars' mTLS; scripts/sentry.sh) and
# Jaeger (the trace store; scripts/jaeger.sh).
#
#   stack.sh up      start whatever is not running (idempotent; fast when all runs already)
#   stack.sh down    stop what we started (never the external ones named by environment)
#   stack.sh status  one line per service; exit status 1 if any is not up
#   stack.sh clean   down, then delete $TASKEVENTS_STATE (data, logs; the download cache stays)
#
# Environment: everything kafka.sh, postgres.sh and smtp.sh honour, notably KAFKA_BROKERS and
# DATABASE_URL (use those instead of starting our own), KAFKA_PORT, PGPORT, SMTP_PORT,
# MAILSINK_HTTP_PORT, MAILSINK_DIR, MAILSINK_REJECT, SENTRY_PORT, JAEGER_OTLP_GRPC_PORT, JAEGER_UI_PORT, PYTHON, TASKEVENTS_STATE, TASKEVENTS_CACHE.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

HERE="$(cd "$(dirname "$0")" && pwd)"
KAFKA_PORT="${KAFKA_PORT:-9092}"
SMTP_PORT="${SMTP_PORT:-1025}"
MAILSINK_HTTP_PORT="${MAILSINK_HTTP_PORT:-1080}"
MAILSINK_DIR="${MAILSINK_DIR:-$TASKEVENTS_STATE/mail}"
MAILSINK_REJECT="${MAILSINK_REJECT-rejected@example.com}"
export MAILSINK_REJECT

brokers() { echo "${KAFKA_BROKERS:-127.0.0.1:$KAFKA_PORT}"; }
database_url() { bash "$HERE/postgres.sh" url; }

cmd_up() {
  local start
  start=$(now)
  step "Bringing up the local stack (state in $TASKEVENTS_STATE, cache in $TASKEVENTS_CACHE)"
  bash "$HERE/kafka.sh" ensure
  # The broker needs a few seconds to boot: let it do so while Postgres and the sink start.
  bash "$HERE/kafka.sh" start --no-wait
  bash "$HERE/postgres.sh" ensure
  bash "$HERE/postgres.sh" start
  bash "$HERE/smtp.sh" start
  bash "$HERE/sentry.sh" start
  bash "$HERE/jaeger.sh" start
  bash "$HERE/kafka.sh" wait
  bash "$HERE/kafka.sh" topics
  step "Stack up in $(since "$start")"
  cat >&2 <<EOF
    Kafka         $(brokers)   topics task-events, task-events-dlq${KAFKA_BROKERS:+ (external)}
    Postgres      $(database_url)${DATABASE_URL:+ (external)}
                  (tests: database taskevents_test, same role)
    SMTP sink     127.0.0.1:$SMTP_PORT   rejects: ${MAILSINK_REJECT:-nobody}
    inbox         http://127.0.0.1:$MAILSINK_HTTP_PORT/   (JSON: /messages; files: $MAILSINK_DIR)
    Dapr Sentry   127.0.0.1:${SENTRY_PORT:-50100}   trust anchors $TASKEVENTS_STATE/sentry/credentials/ca.crt
    Jaeger        OTLP 127.0.0.1:${JAEGER_OTLP_GRPC_PORT:-4317}   traces http://127.0.0.1:${JAEGER_UI_PORT:-16686}/api/traces
    logs          $TASKEVENTS_STATE/{kafka,postgres,smtp,sentry,jaeger}/
EOF
}

cmd_down() {
  local start
  start=$(now)
  step "Stopping the local stack"
  bash "$HERE/jaeger.sh" stop
  bash "$HERE/sentry.sh" stop
  bash "$HERE/smtp.sh" stop
  bash "$HERE/kafka.sh" stop
  bash "$HERE/postgres.sh" stop
  info "stack down in $(since "$start")"
}

cmd_status() {
  local rc=0
  bash "$HERE/kafka.sh" status || rc=1
  bash "$HERE/postgres.sh" status || rc=1
  bash "$HERE/smtp.sh" status || rc=1
  bash "$HERE/sentry.sh" status || rc=1
  bash "$HERE/jaeger.sh" status || rc=1
  return "$rc"
}

cmd_clean() {
  cmd_down
  case "$TASKEVENTS_STATE" in
    "" | / | "$HOME" | "$HOME/") fail "refusing to delete TASKEVENTS_STATE=$TASKEVENTS_STATE" ;;
  esac
  step "Deleting $TASKEVENTS_STATE (broker data, database, mails, Sentry's root, logs; the cache stays)"
  rm -rf "$TASKEVENTS_STATE"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  clean) cmd_clean ;;
  *) fail "usage: $0 up | down | status | clean" ;;
esac
