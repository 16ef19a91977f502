#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft combined mode) for development and tests, run from
# Maven Central jars (no tarball, no Docker); recipe in scripts/kafka/pom.xml.
#
#   kafka.sh ensure             resolve the jars into $TASKEVENTS_CACHE/kafka/<version>/libs (once)
#   kafka.sh start [--no-wait]  format the storage (once) and start the broker in the background;
#                               waits until it answers unless --no-wait (then use `kafka.sh wait`)
#   kafka.sh wait               wait until the broker answers
#   kafka.sh stop               stop the broker we started
#   kafka.sh topics             create task-events and task-events-dlq (if they do not exist)
#   kafka.sh status             one line: running / stopped / external
#   kafka.sh tool CLASS ARGS…   run a Kafka tool with the cached jars, e.g.
#                               kafka.sh tool org.apache.kafka.tools.TopicCommand --list \
#                                 --bootstrap-server 127.0.0.1:9092
#
# Environment:
#   KAFKA_BROKERS           use this broker list instead (nothing is started or stopped; `start`
#                           only checks that the first host:port accepts connections)
#   KAFKA_VERSION           Kafka release from Maven Central (default below)
#   KAFKA_HOST              address both listeners bind to and advertise (default 127.0.0.1)
#   KAFKA_PORT              PLAINTEXT listener on $KAFKA_HOST (default 9092)
#   KAFKA_CONTROLLER_PORT   KRaft controller listener on $KAFKA_HOST (default 9093)
#   KAFKA_HEAP_OPTS         broker heap (default -Xms256m -Xmx768m)
#   KAFKA_TOPIC_PARTITIONS  partitions of both topics (default 6)
#   KAFKA_START_TIMEOUT     seconds `start`/`wait` wait for the broker (default 90)
#
# State: $TASKEVENTS_STATE/kafka/{data/, kafka.log, kafka.pid, server.properties}.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

# 4.3.1 is the newest 4.x with both kafka_2.13 and kafka-tools on Maven Central (see pom.xml).
KAFKA_VERSION="${KAFKA_VERSION:-4.3.1}"
KAFKA_HOST="${KAFKA_HOST:-127.0.0.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
KAFKA_TOPIC_PARTITIONS="${KAFKA_TOPIC_PARTITIONS:-6}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
# Both topics get the same partition count: dead-lettered events keep their key, and with
# the same count they land in the same partition number as the original.
TOPICS=(task-events task-events-dlq)

POM="$(cd "$(dirname "$0")" && pwd)/kafka/pom.xml"
HOME_DIR="$TASKEVENTS_CACHE/kafka/$KAFKA_VERSION"
LIBS="$HOME_DIR/libs"
MARKER="$LIBS/.complete"
STATE="$TASKEVENTS_STATE/kafka"
DATA="$STATE/data"
LOG="$STATE/kafka.log"
PIDFILE="$STATE/kafka.pid"
CONF="$STATE/server.properties"
SERVER_LOG4J="$STATE/log4j2-server.properties"
TOOLS_LOG4J="$HOME_DIR/log4j2-tools.properties"
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

# Identifies the jar set: re-resolve when the recipe or the version changes.
recipe_id() { printf '%s %s' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"; }

require_java() {
  command -v java >/dev/null \
    || fail "java not found: Kafka needs Java 17+ (Debian: apt-get install -y openjdk-17-jre-headless)"
  local major
  major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
  [ "${major%%.*}" -ge 17 ] 2>/dev/null \
    || fail "java $major found, Kafka $KAFKA_VERSION needs Java 17+ (apt-get install -y openjdk-17-jre-headless)"
}

cmd_ensure() {
  if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$(recipe_id)" ]; then
    info "Kafka $KAFKA_VERSION jars cached in $LIBS ($(find "$LIBS" -name '*.jar' | wc -l) jars)"
    return
  fi
  require_java
  command -v mvn >/dev/null \
    || fail "mvn not found: it resolves the Kafka jars from Maven Central (apt-get install -y maven)"
  mkdir -p "$HOME_DIR"
  local mvnlog="$HOME_DIR/maven.log" tmp="$HOME_DIR/libs.tmp.$$" start
  start=$(now)
  step "Downloading Apache Kafka $KAFKA_VERSION jars from Maven Central (first time only, ~45 MB)"
  info "log: $mvnlog"
  : >"$mvnlog"
  rm -rf "$tmp"
  if ! run_logged "$mvnlog" mvn -B -ntp -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp"; then
    rm -rf "$tmp"
    fail "resolving the Kafka jars failed (is Maven Central reachable? is $KAFKA_VERSION published?); the end of $mvnlog:
$(grep -E '^\[ERROR\]' "$mvnlog" | head -n 15)"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar "$tmp"/kafka-tools-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
    || fail "the resolved jars in $tmp lack kafka_2.13/kafka-tools $KAFKA_VERSION; see $mvnlog"
  if ls "$tmp"/slf4j-api-2.* >/dev/null 2>&1; then
    fail "SLF4J 2.x crept into the Kafka class path (Kafka uses 1.7); fix $POM"
  fi
  rm -rf "$LIBS" "$HOME_DIR"/tools-*.jsa && mv "$tmp" "$LIBS"
  recipe_id >"$MARKER"
  info "$(find "$LIBS" -name '*.jar' | wc -l) jars ($(du -sh "$LIBS" | cut -f1)) in $LIBS, took $(since "$start")"
}

need_libs() {
  [ -f "$MARKER" ] || fail "Kafka jars missing in $LIBS: run 'scripts/kafka.sh ensure' first"
}

write_configs() {
  mkdir -p "$STATE" "$DATA"
  cat >"$CONF" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA
num.network.threads=2
num.io.threads=4
num.partitions=1
num.recovery.threads.per.data.dir=1
offsets.topic.num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
EOF
  cat >"$SERVER_LOG4J" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
}

write_tools_log4j() {
  cat >"$TOOLS_LOG4J" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = STDERR
EOF
}

# An explicit, sorted class path (a "libs/*" wildcard leaves the order to readdir, and the
# class-data archive below is only used when the class path is exactly the one it was made with).
classpath() {
  local cp
  cp=$(printf '%s:' "$LIBS"/*.jar)
  echo "${cp%:}"
}

# Run a Kafka tool main class in a short-lived JVM tuned for start-up time. The first
# successful TopicCommand run also dumps an AppCDS archive of the classes it loaded (admin
# client, network, tools; per Kafka version and java binary), which all later tool runs map:
# ~0.7 s instead of ~2 s per invocation.
run_tool() {
  need_libs
  [ -f "$TOOLS_LOG4J" ] || write_tools_log4j
  local java_bin jsa cds rc=0
  java_bin=$(readlink -f "$(command -v java)")
  jsa="$HOME_DIR/tools-$(printf '%s %s' "$java_bin" "$(stat -c %Y "$java_bin")" | sha256sum | cut -c1-12).jsa"
  if [ -f "$jsa" ]; then
    cds=-XX:SharedArchiveFile="$jsa"
  elif [ "$1" = org.apache.kafka.tools.TopicCommand ]; then
    cds=-XX:ArchiveClassesAtExit="$jsa.tmp.$$"
  else
    cds=-Xshare:auto
  fi
  java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Xlog:disable -Xlog:all=error:stderr "$cds" \
    -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$(classpath)" "$@" || rc=$?
  if [ -f "$jsa.tmp.$$" ]; then
    if [ "$rc" = 0 ]; then mv -f "$jsa.tmp.$$" "$jsa"; else rm -f "$jsa.tmp.$$"; fi
  fi
  return "$rc"
}

# One real request (list topics) with short client time-outs, so that a broker that accepts
# connections but does not serve yet costs seconds, not the default minute.
broker_answers() {
  local probe="$HOME_DIR/probe-client.properties"
  [ -f "$probe" ] || printf '%s\n' default.api.timeout.ms=10000 request.timeout.ms=5000 >"$probe"
  run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$1" --command-config "$probe" \
    --list </dev/null >/dev/null 2>&1
}

check_external() {
  local host port
  read -r host port < <(first_host_port "$KAFKA_BROKERS")
  if port_open "$host" "$port"; then
    info "using the Kafka broker(s) in KAFKA_BROKERS=$KAFKA_BROKERS (nothing started)"
  else
    fail "KAFKA_BROKERS=$KAFKA_BROKERS, but nothing accepts connections on $host:$port.
       Start that broker, or unset KAFKA_BROKERS to run a local one."
  fi
}

format_storage() {
  local stamp="$STATE/formatted-for"
  if [ -f "$DATA/meta.properties" ]; then
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "controller=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT" ]; then
      fail "the Kafka data in $DATA was formatted for $(cat "$stamp") (the KRaft voter set records
       the controller address); keep KAFKA_CONTROLLER_PORT as it was, or run 'scripts/stack.sh clean'"
    fi
    return
  fi
  local start cluster_id
  start=$(now)
  # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding. Like Kafka's own
  # Uuid.randomUuid(), never one starting with "-", which command lines take for an option.
  cluster_id=-
  while [[ "$cluster_id" == -* ]]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
  done
  step "Formatting the KRaft storage in $DATA (first start only)"
  run_tool kafka.tools.StorageTool format --standalone --ignore-formatted \
      -t "$cluster_id" -c "$CONF" >>"$LOG" 2>&1 \
    || fail "formatting the Kafka storage failed; the end of $LOG:
$(tail -n 20 "$LOG")"
  echo "controller=$KAFKA_HOST:$KAFKA_CONTROLLER_PORT" >"$stamp"
  info "cluster id $cluster_id, took $(since "$start")"
}

cmd_start() {
  local wait=yes
  [ "${1:-}" = "--no-wait" ] && wait=no
  if [ -n "${KAFKA_BROKERS:-}" ]; then check_external; return; fi
  need_libs
  require_java
  local pid
  if pid=$(live_pid "$PIDFILE" kafka.Kafka); then
    info "Kafka broker already running (pid $pid) on $BOOTSTRAP"
    [ "$wait" = no ] || cmd_wait
    return
  fi
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$KAFKA_HOST" "$port"; then
      fail "port $port on $KAFKA_HOST is taken by another process (not a broker started by this script).
       Point KAFKA_BROKERS at that broker if it is one, or choose other ports with KAFKA_PORT / KAFKA_CONTROLLER_PORT."
    fi
  done
  write_configs
  [ ! -f "$LOG" ] || mv -f "$LOG" "$LOG.1"
  : >"$LOG"
  format_storage
  step "Starting Kafka $KAFKA_VERSION on $BOOTSTRAP (KRaft, controller on $KAFKA_HOST:$KAFKA_CONTROLLER_PORT)"
  info "log: $LOG"
  # shellcheck disable=SC2086 # KAFKA_HEAP_OPTS holds several options
  setsid java $KAFKA_HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$SERVER_LOG4J" \
    -Dkafka.logs.dir="$STATE" -cp "$(classpath)" kafka.Kafka "$CONF" \
    </dev/null >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  date +%s >"$STATE/started-at"
  [ "$wait" = no ] || cmd_wait
}

cmd_wait() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then check_external; return; fi
  need_libs
  local pid start deadline
  pid=$(live_pid "$PIDFILE" kafka.Kafka) || fail "the Kafka broker is not running; the end of $LOG:
$(tail -n 30 "$LOG" 2>/dev/null)"
  start=$(cat "$STATE/started-at" 2>/dev/null || now)
  deadline=$(( $(now) + KAFKA_START_TIMEOUT ))
  local announced=""
  # Cheap check first (the port), then a real request (list topics) through the tools.
  until port_open "$KAFKA_HOST" "$KAFKA_PORT" && broker_answers "$BOOTSTRAP"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PIDFILE"
      fail "the Kafka broker exited during start-up; the end of $LOG:
$(tail -n 30 "$LOG")"
    fi
    if [ "$(now)" -ge "$deadline" ]; then
      fail "the Kafka broker (pid $pid) did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT}s
       (raise KAFKA_START_TIMEOUT on a slow machine); the end of $LOG:
$(tail -n 30 "$LOG")"
    fi
    if [ -z "$announced" ]; then info "waiting for the broker to answer (up to ${KAFKA_START_TIMEOUT}s)…"; announced=1; fi
    sleep 1
  done
  if [ -n "$announced" ]; then
    info "Kafka broker up on $BOOTSTRAP (pid $pid), start-up took $(( $(now) - start ))s"
  else
    info "Kafka broker answers on $BOOTSTRAP (pid $pid)"
  fi
}

cmd_stop() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    info "KAFKA_BROKERS is set: the broker is not ours, nothing to stop"
    return
  fi
  local pid start
  if pid=$(live_pid "$PIDFILE" kafka.Kafka); then
    start=$(now)
    step "Stopping the Kafka broker (pid $pid)"
    stop_pid "$pid" 60
    info "stopped, took $(since "$start")"
  else
    info "Kafka broker not running"
  fi
  rm -f "$PIDFILE"
}

cmd_topics() {
  local brokers=${KAFKA_BROKERS:-$BOOTSTRAP} existing start missing=()
  need_libs
  start=$(now)
  step "Creating topics ${TOPICS[*]} ($KAFKA_TOPIC_PARTITIONS partitions) on $brokers"
  existing=$(run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --list) \
    || fail "listing topics on $brokers failed (is the broker up? 'scripts/kafka.sh status')"
  for topic in "${TOPICS[@]}"; do
    grep -qxF "$topic" <<<"$existing" || missing+=("$topic")
  done
  for topic in "${missing[@]}"; do
    run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --create \
      --if-not-exists --topic "$topic" --partitions "$KAFKA_TOPIC_PARTITIONS" \
      --replication-factor 1 >/dev/null \
      || fail "creating topic $topic on $brokers failed"
    info "created $topic"
  done
  [ ${#missing[@]} -gt 0 ] || info "topics already exist"
  info "took $(since "$start")"
}

cmd_status() {
  if [ -n "${KAFKA_BROKERS:-}" ]; then
    local host port
    read -r host port < <(first_host_port "$KAFKA_BROKERS")
    if port_open "$host" "$port"; then
      echo "kafka     external $KAFKA_BROKERS (reachable)"
    else
      echo "kafka     external $KAFKA_BROKERS (NOT reachable)"; return 1
    fi
    return
  fi
  local pid
  if pid=$(live_pid "$PIDFILE" kafka.Kafka); then
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
      echo "kafka     running   $BOOTSTRAP (Kafka $KAFKA_VERSION, pid $pid, log $LOG)"
    else
      echo "kafka     starting  $BOOTSTRAP (Kafka $KAFKA_VERSION, pid $pid, log $LOG)"
    fi
  else
    echo "kafka     stopped"; return 1
  fi
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  start) cmd_start "${2:-}" ;;
  wait) cmd_wait ;;
  stop) cmd_stop ;;
  topics) cmd_topics ;;
  status) cmd_status ;;
  tool) shift; [ $# -ge 1 ] || fail "usage: $0 tool MAIN_CLASS [ARGS…]"; run_tool "$@" ;;
  *) fail "usage: $0 ensure | start [--no-wait] | wait | stop | topics | status | tool CLASS ARGS…" ;;
esac
