#!/usr/bin/env bash
# A private PostgreSQL cluster for development and tests.
#
#   postgres.sh ensure   install the server (apt) if missing; initdb the cluster (once)
#   postgres.sh start    start it (if not running) and create role + databases (idempotent)
#   postgres.sh stop     stop it (pg_ctl stop -m fast)
#   postgres.sh status   one line
#   postgres.sh url      print the database URL
#
# Role `taskevents` (password `taskevents`, LOGIN CREATEDB) owns the databases `taskevents`
# and `taskevents_test`; URL postgresql://taskevents:taskevents@127.0.0.1:$PGPORT/taskevents.
#
# Environment:
#   DATABASE_URL  use this database instead: `ensure`/`start` only check that it answers,
#                 `stop` does nothing
#   PG_HOST       address the server listens on (default 127.0.0.1)
#   PGPORT        TCP port on $PG_HOST (default 5432)
#   PG_BINDIR     directory with initdb/pg_ctl/postgres (default: newest /usr/lib/postgresql/*/bin)
#
# State: $TASKEVENTS_STATE/postgres/{data/, run/ (unix socket), postgres.log}. The server runs
# as the `postgres` OS user when this script runs as root (Postgres refuses to run as root),
# otherwise as the calling user.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PG_HOST="${PG_HOST:-127.0.0.1}"
PGPORT="${PGPORT:-5432}"
STATE="$TASKEVENTS_STATE/postgres"
DATA="$STATE/data"
SOCKDIR="$STATE/run"
LOG="$STATE/postgres.log"
APP_ROLE=taskevents
APP_PASSWORD=taskevents
DATABASES=(taskevents taskevents_test)
LOCAL_URL="postgresql://$APP_ROLE:$APP_PASSWORD@$PG_HOST:$PGPORT/taskevents"
# Unix socket paths are limited to 107 bytes; fall back to /tmp for very long state paths.
if [ $(( ${#SOCKDIR} + 20 )) -gt 107 ]; then SOCKDIR="/tmp/taskevents-pg-$(id -u)"; fi

# Run as the cluster's owner, from a directory it can read (the caller's may be under /root).
as_owner() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

apt_install() {
  [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed and this is not root: install it
       (sudo apt-get install -y postgresql), or point DATABASE_URL at an existing database"
  command -v apt-get >/dev/null || fail "PostgreSQL is not installed and apt-get is missing:
       install the PostgreSQL server, or point DATABASE_URL at an existing database"
  local log="$TASKEVENTS_STATE/apt-postgresql.log" start
  start=$(now)
  step "Installing $* with apt-get (first time only)"
  info "log: $log"
  : >"$log"
  export DEBIAN_FRONTEND=noninteractive
  run_logged "$log" apt-get update || fail "apt-get update failed; see $log"
  # The package would create and start its own cluster on 5432 ("main"), which would then
  # hold the port we want: stop it from doing so before the server package goes in.
  if [[ " $* " == *" postgresql "* ]]; then
    run_logged "$log" apt-get install -y --no-install-recommends postgresql-common \
      || fail "apt-get install postgresql-common failed; see $log"
    sed -i 's/^#\?\s*create_main_cluster\s*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf
  fi
  run_logged "$log" apt-get install -y --no-install-recommends "$@" \
    || fail "apt-get install $* failed; see $log"
  info "installed, took $(since "$start")"
}

find_bindir() {
  if [ -n "${PG_BINDIR:-}" ]; then
    [ -x "$PG_BINDIR/pg_ctl" ] || fail "PG_BINDIR=$PG_BINDIR has no pg_ctl"
    echo "$PG_BINDIR"; return
  fi
  local want="" dir
  # A cluster must be run by the major version that created it.
  [ -f "$DATA/PG_VERSION" ] && want=$(cat "$DATA/PG_VERSION")
  if [ -n "$want" ]; then
    dir="/usr/lib/postgresql/$want/bin"
    [ -x "$dir/pg_ctl" ] || fail "the cluster in $DATA is PostgreSQL $want, whose server is not installed
       (apt-get install -y postgresql-$want), or run 'scripts/stack.sh clean' to start afresh"
    echo "$dir"; return
  fi
  dir=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null \
        | sort -V | tail -n 1)
  [ -n "$dir" ] || return 1
  dirname "$dir"
}

check_external() {
  command -v pg_isready >/dev/null || apt_install postgresql-client
  if pg_isready -q -t 10 -d "$DATABASE_URL"; then
    info "using the database in DATABASE_URL (nothing started)"
  else
    fail "DATABASE_URL is set, but that server does not answer (pg_isready: $(pg_isready -t 5 -d "$DATABASE_URL" 2>&1 || true)).
       Start it, or unset DATABASE_URL to run a local cluster."
  fi
}

# The state dir lives under $HOME, which for root is /root (mode 700): let the postgres user
# through the directories above it (search permission only, no listing).
grant_traversal() {
  [ "$(id -u)" = 0 ] || return 0
  id postgres >/dev/null 2>&1 \
    || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  local dir="" part parts
  # From the top down: a directory is only reachable once its parents are.
  IFS=/ read -ra parts <<<"${STATE#/}"
  for part in "${parts[@]}"; do
    dir="$dir/$part"
    [ -d "$dir" ] || break
    if ! runuser -u postgres -- test -x "$dir"; then
      if command -v setfacl >/dev/null && setfacl -m u:postgres:x "$dir" 2>/dev/null; then
        info "granted the postgres user search access to $dir (ACL)"
      else
        chmod o+x "$dir"
        info "made $dir traversable (o+x) so the postgres user can reach its data"
      fi
    fi
  done
  mkdir -p "$STATE"
  chown postgres: "$STATE"
}

cmd_ensure() {
  if [ -n "${DATABASE_URL:-}" ]; then check_external; return; fi
  local bindir
  if ! bindir=$(find_bindir); then
    apt_install postgresql
    bindir=$(find_bindir) || fail "PostgreSQL was installed but no /usr/lib/postgresql/*/bin/initdb was found"
  fi
  grant_traversal
  if [ -f "$DATA/PG_VERSION" ]; then
    info "PostgreSQL $(cat "$DATA/PG_VERSION") cluster in $DATA"
    return
  fi
  local start
  start=$(now)
  step "Creating a PostgreSQL cluster in $DATA (PostgreSQL $("$bindir/postgres" --version | sed 's/^[^0-9]*\([0-9.]*\).*/\1/'))"
  info "log: $STATE/initdb.log"
  mkdir -p "$STATE"
  rm -rf "$DATA.tmp"
  [ "$(id -u)" != 0 ] || chown postgres: "$STATE"
  # Local (socket) connections are trusted: the socket directory is private to the owner.
  as_owner "$bindir/initdb" -D "$DATA.tmp" -U postgres -E UTF8 --no-locale \
      --auth-local=trust --auth-host=scram-sha-256 >"$STATE/initdb.log" 2>&1 \
    || fail "initdb failed; the end of $STATE/initdb.log:
$(tail -n 20 "$STATE/initdb.log")"
  echo "include_if_exists = 'taskevents.conf'" >>"$DATA.tmp/postgresql.conf"
  mv "$DATA.tmp" "$DATA"
  info "cluster created, took $(since "$start")"
}

write_conf() {
  as_owner mkdir -p "$SOCKDIR"
  as_owner chmod 700 "$SOCKDIR"
  as_owner tee "$DATA/taskevents.conf" >/dev/null <<EOF
# Generated by scripts/postgres.sh on every start; edits are overwritten.
listen_addresses = '$PG_HOST'
port = $PGPORT
unix_socket_directories = '$SOCKDIR'
max_connections = 200
shared_buffers = 128MB
log_timezone = 'UTC'
timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = -1
EOF
}

is_running() { as_owner "$BINDIR/pg_ctl" status -D "$DATA" >/dev/null 2>&1; }

psql_super() {
  as_owner "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCKDIR" -p "$PGPORT" -U postgres -d postgres
}

create_role_and_databases() {
  psql_super <<SQL >/dev/null || fail "creating the role/databases failed; see $LOG"
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$APP_ROLE') THEN
    CREATE ROLE $APP_ROLE LOGIN CREATEDB PASSWORD '$APP_PASSWORD';
  ELSE
    ALTER ROLE $APP_ROLE LOGIN CREATEDB PASSWORD '$APP_PASSWORD';
  END IF;
END
\$\$;
SELECT format('CREATE DATABASE %I OWNER $APP_ROLE', d)
  FROM unnest(ARRAY['${DATABASES[0]}', '${DATABASES[1]}']) AS d
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = d)
\gexec
SQL
}

cmd_start() {
  if [ -n "${DATABASE_URL:-}" ]; then check_external; return; fi
  [ -f "$DATA/PG_VERSION" ] || fail "no cluster in $DATA: run 'scripts/postgres.sh ensure' first"
  BINDIR=$(find_bindir) || fail "PostgreSQL server binaries not found: run 'scripts/postgres.sh ensure'"
  if is_running; then
    local running_port
    running_port=$(sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true)
    [ "$running_port" = "$PGPORT" ] || fail "our cluster is already running on port $running_port, not PGPORT=$PGPORT:
       'scripts/postgres.sh stop' it first (with the old PGPORT), or use that port"
    info "PostgreSQL already running on $PG_HOST:$PGPORT ($DATA)"
  else
    if port_open "$PG_HOST" "$PGPORT"; then
      fail "port $PGPORT on $PG_HOST is taken by another server (not the cluster in $DATA).
       To use that server, set DATABASE_URL=postgresql://USER:PASSWORD@$PG_HOST:$PGPORT/DB;
       to run ours next to it, set PGPORT to a free port (e.g. PGPORT=5433)."
    fi
    write_conf
    local start
    start=$(now)
    step "Starting PostgreSQL on $PG_HOST:$PGPORT"
    info "log: $LOG"
    [ "$(id -u)" != 0 ] || { touch "$LOG"; chown postgres: "$LOG"; }
    as_owner "$BINDIR/pg_ctl" start -D "$DATA" -l "$LOG" -w -t 60 -s \
      || fail "PostgreSQL did not start; the end of $LOG:
$(tail -n 20 "$LOG")"
    info "started, took $(since "$start")"
  fi
  create_role_and_databases
  info "databases ${DATABASES[*]} ready: $LOCAL_URL"
}

cmd_stop() {
  if [ -n "${DATABASE_URL:-}" ]; then
    info "DATABASE_URL is set: the database is not ours, nothing to stop"
    return
  fi
  if [ ! -f "$DATA/PG_VERSION" ]; then info "PostgreSQL: no cluster"; return; fi
  BINDIR=$(find_bindir) || fail "PostgreSQL server binaries not found"
  if is_running; then
    local start
    start=$(now)
    step "Stopping PostgreSQL"
    as_owner "$BINDIR/pg_ctl" stop -D "$DATA" -m fast -w -t 60 -s \
      || fail "pg_ctl stop failed; see $LOG"
    info "stopped, took $(since "$start")"
  else
    info "PostgreSQL not running"
  fi
}

cmd_status() {
  if [ -n "${DATABASE_URL:-}" ]; then
    if command -v pg_isready >/dev/null && pg_isready -q -t 5 -d "$DATABASE_URL"; then
      echo "postgres  external DATABASE_URL (answers)"
    else
      echo "postgres  external DATABASE_URL (NOT answering)"; return 1
    fi
    return
  fi
  if [ -f "$DATA/PG_VERSION" ] && BINDIR=$(find_bindir) && is_running; then
    echo "postgres  running   $LOCAL_URL (PostgreSQL $(cat "$DATA/PG_VERSION"), log $LOG)"
  else
    echo "postgres  stopped"; return 1
  fi
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  url) echo "${DATABASE_URL:-$LOCAL_URL}" ;;
  *) fail "usage: $0 ensure | start | stop | status | url" ;;
esac
