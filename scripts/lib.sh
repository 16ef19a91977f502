# shellcheck shell=bash
# Shared shell helpers for the set-up scripts. Sourced, never run.
# Everything built or downloaded lives under $TASKEVENTS_CACHE, outside the checkout;
# everything a running stack writes (data, logs, pids) lives under $TASKEVENTS_STATE.

TASKEVENTS_CACHE="${TASKEVENTS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/taskevents}"
TASKEVENTS_STATE="${TASKEVENTS_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/taskevents}"
export TASKEVENTS_CACHE TASKEVENTS_STATE
mkdir -p "$TASKEVENTS_CACHE" "$TASKEVENTS_STATE"

step() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
fail() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Seconds since the epoch, for "took N s" lines.
now() { date +%s; }

# Wait until "host port" accepts TCP connections, or give up after $3 seconds.
wait_for_port() {
  local host=$1 port=$2 deadline=$(( $(now) + ${3:-60} ))
  until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do
    [ "$(now)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Fail unless every port after the first two arguments is free on 127.0.0.1: $1 names the
# server a script starts ("a Jaeger"), $2 the variables that choose other ports.
require_free_ports() {
  local what=$1 variables=$2 port; shift 2
  for port in "$@"; do
    if port_open 127.0.0.1 "$port"; then
      fail "port $port on 127.0.0.1 is taken by another process (not $what started by this script).
       Stop it, or choose other ports with $variables."
    fi
  done
}

# Run a long command with its output in a log file, printing a heartbeat with the
# elapsed time and the last line of the log every 15 s so people see it is alive.
run_logged() {
  local log=$1; shift
  local start; start=$(now)
  "$@" >>"$log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    local elapsed=$(( $(now) - start ))
    if (( elapsed % 15 == 0 )); then
      info "… ${elapsed}s: $(tail -n 1 "$log" 2>/dev/null | cut -c1-100)"
    fi
  done
  wait "$pid"
}

# --- background processes (kafka.sh, smtp.sh) ---------------------------------------------

# Print the pid recorded in pid file $1 if that process is alive and its command line
# contains $2 (guards against a recycled pid); fail silently otherwise.
live_pid() {
  local pidfile=$1 pattern=${2:-} pid
  [ -f "$pidfile" ] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -n "$pattern" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  fi
  echo "$pid"
}

# Stop process $1 with SIGTERM, waiting up to $2 seconds (default 30) before SIGKILL.
stop_pid() {
  local pid=$1 deadline=$(( $(now) + ${2:-30} ))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(now)" -ge "$deadline" ]; then
      info "pid $pid still running after ${2:-30}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
}

# "host1:port1,host2:port2" -> "host1 port1" (the first entry; scheme prefixes dropped).
first_host_port() {
  local first=${1%%,*}
  first=${first#*://}
  printf '%s %s\n' "${first%:*}" "${first##*:}"
}

# Seconds elapsed since $1 (from `now`), as "N s".
since() { echo "$(( $(now) - $1 )) s"; }

# Hold an exclusive lock on file $1 until the script exits: two set-ups started together
# (two checkouts, CI beside a developer) build one after the other, never over each other.
hold_lock() {
  mkdir -p "$(dirname "$1")"
  exec 9>"$1"
  flock 9
}
