#!/usr/bin/env bash
# The development SMTP sink (scripts/mailsink.py) in the background.
#
#   smtp.sh start    start it (if not running) and wait until it accepts connections
#   smtp.sh stop     stop the one we started
#   smtp.sh status   one line
#
# Environment:
#   PYTHON              interpreter with aiosmtpd installed (default python3; the Makefile
#                       passes the project venv's python)
#   SMTP_HOST           address both ports listen on (default 127.0.0.1)
#   SMTP_PORT           SMTP port on $SMTP_HOST (default 1025)
#   MAILSINK_HTTP_PORT  web inbox port (default 1080; 0 disables it)
#   MAILSINK_DIR        where mails are stored (default $TASKEVENTS_STATE/mail)
#   MAILSINK_REJECT     comma-separated recipients refused with a permanent 550, read at start
#                       (default rejected@example.com; set it empty to accept everyone)
#
# State: $TASKEVENTS_STATE/smtp/{mailsink.log, mailsink.pid}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PYTHON="${PYTHON:-python3}"
SMTP_HOST="${SMTP_HOST:-127.0.0.1}"
SMTP_PORT="${SMTP_PORT:-1025}"
MAILSINK_HTTP_PORT="${MAILSINK_HTTP_PORT:-1080}"
MAILSINK_DIR="${MAILSINK_DIR:-$TASKEVENTS_STATE/mail}"
MAILSINK_REJECT="${MAILSINK_REJECT-rejected@example.com}"
MAILSINK_HOST="$SMTP_HOST"
export MAILSINK_HOST SMTP_PORT MAILSINK_HTTP_PORT MAILSINK_DIR MAILSINK_REJECT
SCRIPT="$(cd "$(dirname "$0")" && pwd)/mailsink.py"
STATE="$TASKEVENTS_STATE/smtp"
LOG="$STATE/mailsink.log"
PIDFILE="$STATE/mailsink.pid"

inbox_url() {
  if [ "$MAILSINK_HTTP_PORT" != 0 ]; then echo "http://$SMTP_HOST:$MAILSINK_HTTP_PORT/"; else echo "(disabled)"; fi
}

cmd_start() {
  local pid start
  if pid=$(live_pid "$PIDFILE" mailsink.py); then
    info "SMTP sink already running (pid $pid) on $SMTP_HOST:$SMTP_PORT, inbox $(inbox_url)"
    return
  fi
  for port in "$SMTP_PORT" "$MAILSINK_HTTP_PORT"; do
    if [ "$port" != 0 ] && port_open "$SMTP_HOST" "$port"; then
      fail "port $port on $SMTP_HOST is taken by another process (not a mail sink started by this script).
       Stop it, or choose other ports with SMTP_PORT / MAILSINK_HTTP_PORT."
    fi
  done
  command -v "$PYTHON" >/dev/null || fail "PYTHON=$PYTHON not found"
  "$PYTHON" -c 'import aiosmtpd' 2>/dev/null \
    || fail "$PYTHON cannot import aiosmtpd: run 'uv sync' and set PYTHON=.venv/bin/python
       (or pip install aiosmtpd into the interpreter PYTHON names)"
  mkdir -p "$STATE" "$MAILSINK_DIR"
  start=$(now)
  step "Starting the SMTP sink on $SMTP_HOST:$SMTP_PORT (mails in $MAILSINK_DIR)"
  info "log: $LOG"
  setsid "$PYTHON" "$SCRIPT" </dev/null >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local deadline=$(( $(now) + 20 ))
  until port_open "$SMTP_HOST" "$SMTP_PORT" \
        && { [ "$MAILSINK_HTTP_PORT" = 0 ] || port_open "$SMTP_HOST" "$MAILSINK_HTTP_PORT"; }; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      fail "the SMTP sink exited during start-up; the end of $LOG:
$(tail -n 20 "$LOG")"
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      fail "the SMTP sink (pid $pid) did not open port $SMTP_PORT within 20s; the end of $LOG:
$(tail -n 20 "$LOG")"
    fi
    sleep 0.2
  done
  info "SMTP sink up (pid $pid), inbox $(inbox_url), took $(since "$start")"
}

cmd_stop() {
  local pid
  if pid=$(live_pid "$PIDFILE" mailsink.py); then
    step "Stopping the SMTP sink (pid $pid)"
    stop_pid "$pid" 10
  else
    info "SMTP sink not running"
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  if pid=$(live_pid "$PIDFILE" mailsink.py); then
    echo "smtp      running   $SMTP_HOST:$SMTP_PORT, inbox $(inbox_url), mails in $MAILSINK_DIR (pid $pid)"
  else
    echo "smtp      stopped"; return 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) fail "usage: $0 start | stop | status" ;;
esac
