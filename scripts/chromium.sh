#!/usr/bin/env bash
# Debian's Chromium, for the live-page browser test (driven by the Python Playwright
# package through its executable path; `playwright install` is never used).
# Idempotent: does nothing when /usr/bin/chromium (or $CHROMIUM) exists.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
  info "chromium present: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi
command -v apt-get >/dev/null || fail "no $CHROMIUM and no apt-get: install Chromium and set CHROMIUM=/path/to/chromium"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || fail "installing chromium needs root (apt-get); run: apt-get install -y chromium"
  SUDO="sudo"
fi
log="$TASKEVENTS_STATE/chromium-install.log"
step "installing Debian's chromium (apt-get; log: $log)"
start=$(now)
export DEBIAN_FRONTEND=noninteractive
info "apt-get update"
$SUDO apt-get update >"$log" 2>&1 || { tail -n 20 "$log" >&2; fail "apt-get update failed (log: $log)"; }
info "apt-get install -y chromium fonts-liberation"
$SUDO apt-get install -y --no-install-recommends chromium fonts-liberation >>"$log" 2>&1 \
  || { tail -n 20 "$log" >&2; fail "apt-get install chromium failed (log: $log)"; }
[ -x "$CHROMIUM" ] || fail "chromium installed but $CHROMIUM is missing (log: $log)"
info "$("$CHROMIUM" --version 2>/dev/null) installed in $(( $(now) - start )) s"
