#!/usr/bin/env bash
# Prometheus (Debian's package) for `make run`: scrapes every app's /metrics and every
# sidecar's metrics port of dapr.yaml, with the chart's rules (helm-chart/files/prometheus/).
#
#   prometheus.sh ensure   Prometheus and promtool present: prints the directory holding them
#   prometheus.sh start    write the configuration from dapr.yaml and start it (if not running)
#   prometheus.sh stop     stop the one we started
#   prometheus.sh status   one line
#
# Where the binaries come from: `prometheus` and `promtool` on PATH (`apt-get install
# prometheus` puts them in /usr/bin), or else Debian's .deb fetched with `apt-get download`
# (no root) and unpacked into $TASKEVENTS_CACHE with the libjs-* packages of its classic web UI
# (http://127.0.0.1:9290/classic/graph). Not `apt-get install` from here: on a machine with
# systemd the package starts a system-wide Prometheus on :9090 and needs root.
#
# Environment: PROMETHEUS_PORT (default 9290; 9090 is daprd's and the Debian service's
# default), PROMETHEUS_SCRAPE_INTERVAL (default 5s), PYTHON (with the workspace installed).
# State: $TASKEVENTS_STATE/prometheus/{prometheus.yml, data/, prometheus.log, prometheus.pid}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9290}"
PROMETHEUS_SCRAPE_INTERVAL="${PROMETHEUS_SCRAPE_INTERVAL:-5s}"
DEB_VERSION="2.42.0+ds-5+deb12u1"
CACHED="$TASKEVENTS_CACHE/prometheus-$DEB_VERSION"
STATE="$TASKEVENTS_STATE/prometheus"
LOG="$STATE/prometheus.log"
PIDFILE="$STATE/prometheus.pid"

bin_dir() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    dirname "$(command -v prometheus)"
  elif [ -x "$CACHED/usr/bin/prometheus" ] && [ -x "$CACHED/usr/bin/promtool" ]; then
    echo "$CACHED/usr/bin"
  else
    return 1
  fi
}

cmd_ensure() {
  local dir start
  if dir=$(bin_dir); then
    info "prometheus present: $("$dir/prometheus" --version 2>&1 | head -n 1)"
    echo "$dir"
    return
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || fail "no prometheus/promtool on PATH and no apt-get/dpkg-deb to fetch Debian's package:
       install Prometheus 2.42 or newer (e.g. apt-get install prometheus)"
  hold_lock "$TASKEVENTS_CACHE/locks/prometheus.lock"
  if dir=$(bin_dir); then echo "$dir"; return; fi
  start=$(now)
  step "Fetching Debian's prometheus $DEB_VERSION (apt-get download; unpacked into $CACHED)"
  WORK=$(mktemp -d "$TASKEVENTS_CACHE/prometheus-download.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  (cd "$WORK" && apt-get download "prometheus=$DEB_VERSION" >download.log 2>&1) \
    || (cd "$WORK" && apt-get download prometheus >>download.log 2>&1) \
    || { tail -n 20 "$WORK/download.log" >&2; fail "apt-get download prometheus failed (run apt-get update?)"; }
  dpkg-deb -x "$WORK"/prometheus_*.deb "$WORK/root"
  # The web UI's JavaScript and fonts are other Debian packages (its static/ links into
  # /usr/share/javascript): fetched and unpacked beside it, so the UI works from the cache too.
  local assets
  assets=$(dpkg-deb -f "$WORK"/prometheus_*.deb Depends | tr ',' '\n' | sed 's/(.*//; s/ //g' \
    | grep -E '^(libjs-|fonts-)' | tr '\n' ' ')
  mkdir -p "$WORK/assets"
  # shellcheck disable=SC2086 # a list of package names
  (cd "$WORK/assets" && apt-get download $assets libjs-d3 >>"$WORK/download.log" 2>&1) \
    || info "the web UI's JavaScript could not be fetched (the API and rules work without it)"
  for deb in "$WORK"/assets/*.deb; do [ -e "$deb" ] && dpkg-deb -x "$deb" "$WORK/root"; done
  rm -rf "$CACHED"
  mv "$WORK/root" "$CACHED"
  "$CACHED/usr/bin/promtool" --version >/dev/null 2>&1 || fail "promtool from the package does not run"
  info "$("$CACHED/usr/bin/prometheus" --version 2>&1 | head -n 1), took $(since "$start")"
  echo "$CACHED/usr/bin"
}

cmd_start() {
  local dir pid start
  dir=$(cmd_ensure)
  mkdir -p "$STATE/data"
  "$PYTHON" -m taskevents_cli.prometheus -f "$ROOT/dapr.yaml" --out "$STATE/prometheus.yml" \
    --scrape-interval "$PROMETHEUS_SCRAPE_INTERVAL"
  "$dir/promtool" check config "$STATE/prometheus.yml" >/dev/null \
    || fail "promtool refused $STATE/prometheus.yml"
  if pid=$(live_pid "$PIDFILE" prometheus); then
    # Running already: read the configuration again (dapr.yaml or the rules may have changed).
    kill -HUP "$pid"
    info "Prometheus already running (pid $pid) on http://127.0.0.1:$PROMETHEUS_PORT/; configuration reloaded"
    return
  fi
  port_open 127.0.0.1 "$PROMETHEUS_PORT" \
    && fail "port $PROMETHEUS_PORT on 127.0.0.1 is taken by another process; choose another with PROMETHEUS_PORT"
  start=$(now)
  step "Starting Prometheus on http://127.0.0.1:$PROMETHEUS_PORT/ (log: $LOG)"
  local assets=()
  # Debian's binary reads its UI from /usr/share/prometheus/web; the cached copy has its own.
  [ "$dir" = "$CACHED/usr/bin" ] && assets=(--web.local-assets="$CACHED/usr/share/prometheus/web/")
  setsid "$dir/prometheus" "${assets[@]}" --config.file="$STATE/prometheus.yml" \
    --storage.tsdb.path="$STATE/data" --storage.tsdb.retention.time=2d \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" </dev/null >>"$LOG" 2>&1 &
  pid=$!
  echo "$pid" >"$PIDFILE"
  local deadline=$(( $(now) + 30 ))
  until curl -fsS "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; fail "Prometheus exited during start-up; the end of $LOG:
$(tail -n 20 "$LOG")"; }
    [ "$(now)" -lt "$deadline" ] || fail "Prometheus (pid $pid) not ready within 30 s; see $LOG"
    sleep 0.2
  done
  info "Prometheus up (pid $pid), took $(since "$start")"
}

cmd_stop() {
  local pid
  if pid=$(live_pid "$PIDFILE" prometheus); then
    step "Stopping Prometheus (pid $pid)"
    stop_pid "$pid" 20
  fi
  rm -f "$PIDFILE"
}

cmd_status() {
  local pid
  if pid=$(live_pid "$PIDFILE" prometheus); then
    echo "prometheus running  http://127.0.0.1:$PROMETHEUS_PORT/ (pid $pid)"
  else
    echo "prometheus stopped"; return 1
  fi
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) fail "usage: $0 ensure | start | stop | status" ;;
esac
