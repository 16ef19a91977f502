"""audit-log-service benchmark: events per second from publish to committed row, through
daprd with bulk subscribe on and off, against a direct Kafka → asyncpg consumer on the same
broker and database in the same run; and query latency on 1,000,000 rows.

    uv run python bench/audit_throughput.py [--events 20000] [--rows 1000000]

Needs the local stack (`bash scripts/stack.sh up`). Everything happens on a topic and in a
database of its own (`audit-bench-<id>`, `taskevents_audit_bench`), so nothing else sees it.
Prints the figures and records them in bench/results/audit_throughput.{json,md}."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from audit_log_service.adapters.postgres import AUDIT_MIGRATIONS, PostgresAuditLog
from audit_log_service.ports import Delivery
from taskevents.cloudevents import parse_cloud_event
from taskevents.kafka import KafkaSettings
from taskevents.postgres import (
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    migrate,
    packaged_migrations,
)
from taskevents_cli.devrun import AppSpec, RunningApp, start_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Batches,
    consume_until,
    cpu_table,
    daprd_path,
    free_port,
    machine,
    record_results,
    say,
)
from bench.procfs import CpuMeter, kafka_pids, one_process, postgres_pids  # noqa: E402
from bench.tokens import operator_headers  # noqa: E402

COMPONENTS = ROOT / "dapr-components"
# KAFKA_BROKERS and the other client settings (TLS, SASL) of taskevents.kafka.
KAFKA = KafkaSettings()
BROKERS = KAFKA.brokers
SERVER_URL = os.environ.get(
    "BENCH_SERVER_URL", "postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents"
)
# A database of its own: other benchmarks may drop and recreate theirs.
BENCH_DB = "taskevents_audit_bench"
APP_ID = "audit-bench"
PARTITIONS = 6
QUERY_ROUNDS = 200
EVENT_TYPE = "task.updated"


def bench_url() -> str:
    return SERVER_URL.rsplit("/", 1)[0] + "/" + BENCH_DB


async def ensure_database() -> None:
    connection = await asyncpg.connect(SERVER_URL)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", BENCH_DB)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{BENCH_DB}"')
    finally:
        await connection.close()
    await migrate(
        bench_url(),
        packaged_migrations("audit_log_service"),
        AUDIT_MIGRATIONS,
        connect_timeout_seconds=5,
    )


def event_message(run: str, n: int) -> tuple[bytes, bytes]:
    data = {
        "event_id": f"{run}-{n}",
        "type": EVENT_TYPE,
        "task_id": f"task-{run}-{n % 500}",
        "user_id": f"user-{run}",
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"title": f"task {n}", "n": n},
    }
    envelope = {
        "specversion": "1.0",
        "id": data["event_id"],
        "source": "audit-bench",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "topic": "task-events",
        "pubsubname": "kafka-pubsub",
        "data": data,
    }
    return json.dumps(envelope).encode(), str(data["task_id"]).encode()


async def produce(topic: str, run: str, count: int) -> float:
    """Publish `count` CloudEvents as fast as the producer goes; returns when it started."""
    producer = AIOKafkaProducer(**KAFKA.client_options(), linger_ms=5, acks="all")
    await producer.start()
    started = time.monotonic()
    try:
        pending = []
        for n in range(count):
            value, key = event_message(run, n)
            pending.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return started


async def count_rows(pool: Any, run: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM audit_events WHERE user_id = $1", f"user-{run}"
    )
    return count


def cpu_meter(app: RunningApp | None) -> CpuMeter:
    """Where the CPU goes: the consumer's processes, the database, the broker, and this
    process (the producer and the row counting; for the baseline, its consumer too)."""
    groups = {}
    if app is not None:
        for name, managed in (("audit-log-service", app.app), ("daprd", app.sidecar)):
            groups[name] = one_process(managed.pid if managed else None)
    return CpuMeter(
        {
            **groups,
            "postgres": postgres_pids,
            "kafka": kafka_pids,
            "benchmark process": lambda: [os.getpid()],
        }
    )


async def measure(
    pool: Any, topic: str, count: int, meter: CpuMeter, *, timeout: float = 600.0
) -> dict[str, Any]:
    """Publish `count` events and wait until all are committed rows."""
    run = uuid.uuid4().hex[:10]
    cpu_before = meter.read()
    producing = asyncio.create_task(produce(topic, run, count))
    deadline = time.monotonic() + timeout
    while (stored := await count_rows(pool, run)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stored} of {count} rows after {timeout:.0f}s")
        await asyncio.sleep(0.05)
    finished = time.monotonic()
    started = await producing
    cpu_used = CpuMeter.used(cpu_before, meter.read())
    seconds = finished - started
    return {
        "events": count,
        "seconds": round(seconds, 3),
        "events_per_second": round(count / seconds),
        "cpu_us_per_event": {name: round(used / count * 1e6) for name, used in cpu_used.items()},
    }


def render_resources(target: Path, topic: str, group: str, *, bulk: bool) -> None:
    """The production components, with a topic and consumer group of the benchmark's own and
    the subscription under test (bulk on or off)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in COMPONENTS.glob("*.yaml"):
        document = yaml.safe_load(source.read_text())
        if source.name == "configuration.yaml" or (
            document.get("kind") == "Resiliency"
            and "audit-log-service" not in document.get("scopes", [])
        ):
            continue  # the audit log's own resiliency only
        if document.get("kind") == "Component" and document["metadata"]["name"] == "kafka-pubsub":
            document["spec"]["metadata"] += [{"name": "consumerGroup", "value": group}]
        if "scopes" in document:
            document["scopes"] = [APP_ID]
        (target / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    subscription: dict[str, Any] = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": "audit-bench"},
        "spec": {
            "pubsubname": "kafka-pubsub",
            "topic": topic,
            "routes": {"default": "/events/task-events/bulk" if bulk else "/events/task-events"},
            "deadLetterTopic": topic + "-dlq",
        },
        "scopes": [APP_ID],
    }
    production = next(
        d
        for d in yaml.safe_load_all(
            (COMPONENTS / "subscriptions/audit-log-service.yaml").read_text()
        )
        if d["spec"]["topic"] == "task-events"
    )
    if bulk:
        subscription["spec"]["bulkSubscribe"] = production["spec"]["bulkSubscribe"]
    (target / "subscription.yaml").write_text(yaml.safe_dump(subscription, sort_keys=False))


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f}s")
        await asyncio.sleep(0.25)


@contextlib.asynccontextmanager
async def dapr_consumer(
    pool: Any, topic: str, *, bulk: bool, work: Path
) -> AsyncIterator[RunningApp]:
    """audit-log-service beside daprd, subscribed to `topic`, warmed up."""
    group = f"audit-bench-{uuid.uuid4().hex[:8]}"
    resources = work / f"resources-{'bulk' if bulk else 'single'}"
    render_resources(resources, topic, group, bulk=bulk)
    spec = AppSpec(
        app_id=APP_ID,
        app_dir=ROOT,
        command=[str(Path(sys.executable).parent / "audit-log-service")],
        app_port=free_port(),
        dapr_http_port=free_port(),
        dapr_grpc_port=free_port(),
        metrics_port=free_port(),
        resources_paths=[resources],
        config_path=COMPONENTS / "configuration.yaml",
        env={"DATABASE_URL": bench_url(), "LOG_LEVEL": "WARNING", "TASKEVENTS_ENV": "development"},
        log_level="warn",
    )
    app: RunningApp = start_app(
        spec,
        daprd=daprd_path(),
        log_dir=work / "logs",
        daprd_env={"TASKEVENTS_KAFKA_BROKERS": BROKERS, "TASKEVENTS_DATABASE_URL": bench_url()},
    )
    try:
        app.wait_ready()
        await warm_up(pool, topic, app.check_alive)
        yield app
    finally:
        app.stop()


async def warm_up(pool: Any, topic: str, check: Callable[[], None]) -> None:
    """One small batch end to end, so the measurement starts with a consumer in its group."""
    run = uuid.uuid4().hex[:10]
    producer = AIOKafkaProducer(**KAFKA.client_options())
    await producer.start()
    try:
        for n in range(PARTITIONS):
            value, key = event_message(run, n)
            await producer.send_and_wait(topic, value, key=key, partition=n)
    finally:
        await producer.stop()

    async def arrived() -> bool:
        check()
        return await count_rows(pool, run) >= PARTITIONS

    await wait_for(arrived, "the warm-up events")


async def direct_consumer(
    topic: str, group: str, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    """The baseline: aiokafka batches straight into the same INSERT (one round trip per
    batch), offsets committed after the rows; no Dapr."""
    pool = await create_pool(bench_url(), PoolSettings(max_size=4, command_timeout_seconds=30))
    writer = PostgresAuditLog(pool, SchemaStatus(migrated=True), acquire_timeout_seconds=5)
    consumer = AIOKafkaConsumer(
        topic,
        **KAFKA.client_options(),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )

    async def handle(batches: Batches) -> None:
        for records in batches.values():
            batch = []
            for record in records:
                envelope = parse_cloud_event(record.value or b"")
                delivery = Delivery(
                    source=envelope.source,
                    kafka_partition=record.partition,
                    kafka_offset=record.offset,
                )
                batch.append((envelope.task_event(), delivery))
            await writer.record_events(batch)

    try:
        await consume_until(consumer, stop, ready, handle)
    finally:
        await close_pool(pool)


@contextlib.asynccontextmanager
async def direct(pool: Any, topic: str) -> AsyncIterator[None]:
    """The baseline consumer on `topic`, warmed up."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        direct_consumer(topic, f"audit-bench-direct-{uuid.uuid4().hex[:8]}", stop, ready)
    )
    try:
        await asyncio.wait_for(ready.wait(), 60)

        def alive() -> None:
            if task.done():
                task.result()

        await warm_up(pool, topic, alive)
        yield
    finally:
        stop.set()
        await task


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run, and every run's rate."""
    middle = sorted(runs, key=lambda r: r["events_per_second"])[len(runs) // 2]
    return {**middle, "runs_events_per_second": [r["events_per_second"] for r in runs]}


FILL_SQL = """
INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at, received_at, payload,
                          source, kafka_partition, kafka_offset)
SELECT 'fill-' || n,
       (ARRAY['task.created','task.updated','task.completed','task.deleted',
              'task.recurring.triggered'])[1 + n % 5],
       'fill-task-' || (n % 100000),
       'fill-user-' || (n % 10000),
       $1::timestamptz - make_interval(secs => (n * 5.1840)::double precision),
       now(),
       jsonb_build_object('title', 'task ' || n),
       'bench', n % 6, n
  FROM generate_series($2::bigint, $3::bigint) AS n
"""


async def fill(pool: Any, rows: int, newest: datetime) -> float:
    """`rows` events over the 60 days before `newest`, unless they are there already."""
    have: int = await pool.fetchval(
        "SELECT count(*) FROM audit_event_ids WHERE event_id LIKE 'fill-%'"
    )
    started = time.monotonic()
    if have < rows:
        say(f"  filling {rows - have} rows …")
        step = 100_000
        for first in range(have, rows, step):
            last = min(first + step, rows) - 1
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute(FILL_SQL, newest, first, last)
                await connection.execute(
                    "INSERT INTO audit_event_ids (event_id) SELECT 'fill-' || n"
                    " FROM generate_series($1::bigint, $2::bigint) AS n",
                    first,
                    last,
                )
    # As autovacuum would have by now on a table this size: statistics, and the visibility
    # map that lets the stats query count from the index alone.
    await pool.execute("VACUUM (ANALYZE) audit_events")
    await pool.execute("VACUUM (ANALYZE) audit_event_ids")
    return time.monotonic() - started


async def query_latency(rows: int, work: Path) -> dict[str, Any]:
    """p50/p95 of the read API over HTTP against `rows` stored events."""
    pool = await asyncpg.create_pool(bench_url(), min_size=1, max_size=2)
    newest = datetime(2026, 11, 1, tzinfo=UTC)
    try:
        fill_seconds = await fill(pool, rows, newest)  # and vacuum
        total: int = await pool.fetchval("SELECT count(*) FROM audit_events")
    finally:
        await pool.close()
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": bench_url(),
        "AUDIT_PORT": str(port),
        "APP_PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "TASKEVENTS_ENV": "development",
    }
    log = (work / "query-app.log").open("wb")
    app = subprocess.Popen(  # noqa: ASYNC220 (started once, not awaited on)
        [str(Path(sys.executable).parent / "audit-log-service")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=operator_headers()) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/health")).is_success
                except httpx.HTTPError:
                    return False

            await wait_for(up, "the query app")
            first_page = (await http.get("/audit/events", params={"limit": 100})).json()
            day = newest - timedelta(days=10)
            queries: dict[str, Callable[[int], dict[str, Any]]] = {
                "events, no filter, first page (100)": lambda i: {"limit": 100},
                "events, next page by cursor": lambda i: {
                    "limit": 100,
                    "cursor": first_page["next_cursor"],
                },
                "events by user_id (100)": lambda i: {"user_id": f"fill-user-{i * 37 % 10000}"},
                "events by task_id": lambda i: {"task_id": f"fill-task-{i * 7919 % 100000}"},
                "events by type + 1-day range": lambda i: {
                    "type": "task.completed",
                    "since": (day - timedelta(hours=i % 100)).isoformat(),
                    "until": (day - timedelta(hours=i % 100) + timedelta(days=1)).isoformat(),
                },
            }
            results: dict[str, Any] = {}
            for name, params in queries.items():

                def events_call(
                    i: int, p: Callable[[int], dict[str, Any]] = params
                ) -> Awaitable[httpx.Response]:
                    return http.get("/audit/events", params=p(i))

                results[name] = await timed(events_call)
            results["task history"] = await timed(
                lambda i: http.get(f"/audit/tasks/fill-task-{i * 7919 % 100000}/history")
            )
            results["stats, 24 hours"] = await timed(
                lambda i: http.get(
                    "/audit/stats",
                    params={
                        "since": (day - timedelta(hours=i % 100)).isoformat(),
                        "until": (day - timedelta(hours=i % 100) + timedelta(days=1)).isoformat(),
                    },
                )
            )
    finally:
        app.terminate()
        app.wait(15)
        log.close()
    return {"rows": total, "fill_seconds": round(fill_seconds, 1), "queries": results}


async def timed(call: Callable[[int], Awaitable[httpx.Response]]) -> dict[str, float]:
    for i in range(10):  # warm the caches and the connection pool
        (await call(i)).raise_for_status()
    samples = []
    for i in range(QUERY_ROUNDS):
        started = time.perf_counter()
        response = await call(i + 10)
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
        "max_ms": round(samples[-1], 2),
    }


def versions() -> dict[str, str]:
    daprd = subprocess.run([daprd_path(), "--version"], capture_output=True, text=True, check=False)
    postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True, check=False)
    import aiokafka

    return {
        "python": platform.python_version(),
        "daprd": daprd.stdout.strip(),
        "postgres_client": postgres.stdout.strip(),
        "asyncpg": asyncpg.__version__,
        "aiokafka": aiokafka.__version__,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="turns of direct vs bulk")
    parser.add_argument("--note", default="", help="recorded with the results")
    parser.add_argument(
        "--no-record", action="store_true", help="print only; leave bench/results/ alone"
    )
    args = parser.parse_args()
    record: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "note": args.note,
    }
    say(f"==> database {BENCH_DB}")
    await ensure_database()
    admin = AIOKafkaAdminClient(**KAFKA.client_options())
    await admin.start()
    topics: list[str] = []

    async def fresh_topic() -> str:
        """A topic per run, so that no run sees another's events."""
        topic = f"audit-bench-{uuid.uuid4().hex[:8]}"
        topics.extend([topic, topic + "-dlq"])
        await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics[-2:]])
        return topic

    work = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    pool = await asyncpg.create_pool(bench_url(), min_size=1, max_size=2)
    try:
        say(f"==> throughput, publish → committed row ({PARTITIONS} partitions)")
        # Direct and bulk take turns, so that both meet the same load on a shared machine.
        direct_runs, bulk_runs = [], []
        direct_topic, bulk_topic, single_topic = [await fresh_topic() for _ in range(3)]
        async with (
            direct(pool, direct_topic),
            dapr_consumer(pool, bulk_topic, bulk=True, work=work) as bulk_app,
        ):
            direct_meter, bulk_meter = cpu_meter(None), cpu_meter(bulk_app)
            for turn in range(args.repeat):
                say(f"  turn {turn + 1}/{args.repeat}: direct, then Dapr bulk, {args.events} each")
                direct_runs.append(await measure(pool, direct_topic, args.events, direct_meter))
                bulk_runs.append(await measure(pool, bulk_topic, args.events, bulk_meter))
        async with dapr_consumer(pool, single_topic, bulk=False, work=work) as single_app:
            say(f"  Dapr, bulk off: {args.events} events")
            single = await measure(pool, single_topic, args.events, cpu_meter(single_app))
        throughput: dict[str, Any] = {
            "direct": summary(direct_runs),
            "dapr_bulk": summary(bulk_runs),
            "dapr_single": summary([single]),
        }
        median_direct = throughput["direct"]["events_per_second"]
        for name in ("dapr_bulk", "dapr_single"):
            throughput[name]["ratio_to_direct"] = round(
                throughput[name]["events_per_second"] / median_direct, 2
            )
        throughput["dapr_bulk"]["ratio_per_turn"] = [
            round(b["events_per_second"] / d["events_per_second"], 2)
            for d, b in zip(direct_runs, bulk_runs, strict=True)
        ]
        record["throughput"] = throughput
        say(f"==> query latency on {args.rows} rows")
        record["query_latency"] = await query_latency(args.rows, work)
    finally:
        await pool.close()
        if topics:
            await admin.delete_topics(topics)
        await admin.close()
        shutil.rmtree(work, ignore_errors=True)
    record_results("audit_throughput", record, markdown(record), no_record=args.no_record)
    return 0


def row(name: str, run: dict[str, Any]) -> str:
    ratio = run.get("ratio_to_direct", 1.0)
    every = ", ".join(str(r) for r in run["runs_events_per_second"])
    return (
        f"| {name} | {run['events']} | {run['seconds']} | {run['events_per_second']} "
        f"| {every} | {ratio:.2f} |"
    )


CPU_COLUMNS = ("audit-log-service", "daprd", "postgres", "kafka", "benchmark process")
PATHS = {"direct": "direct baseline", "dapr_bulk": "Dapr, bulk", "dapr_single": "Dapr, single"}


def markdown(record: dict[str, Any]) -> str:
    t = record["throughput"]
    q = record["query_latency"]
    m = record["machine"]
    lines = [
        f"### audit-log-service ({record['date']})",
        "",
        f"Machine: {m['cpus']} x {m['cpu']}, {m['system']}; load average at start "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_start'])}. " + (record["note"] or ""),
        f"Versions: {record['versions']['daprd']}, {record['versions']['postgres_client']}, "
        f"asyncpg {record['versions']['asyncpg']}, aiokafka {record['versions']['aiokafka']}, "
        f"Python {record['versions']['python']}.",
        "",
        "| publish → committed row (median run) | events | seconds | events/s | every run "
        "| vs direct |",
        "|---|---:|---:|---:|---:|---:|",
        row("direct aiokafka → asyncpg (baseline)", t["direct"]),
        row("Dapr, bulk subscribe", t["dapr_bulk"]),
        row("Dapr, one event per call", t["dapr_single"]),
        "",
        "Dapr bulk / direct, turn by turn (the two take turns): "
        + ", ".join(f"{r:.2f}" for r in t["dapr_bulk"]["ratio_per_turn"])
        + ".",
        "",
        "CPU per event in µs, median run (the consumer's processes, the database, the "
        "broker, and the benchmark's own process: producer and row counting, for the "
        "baseline its consumer too):",
        "",
        *cpu_table({name: t[key]["cpu_us_per_event"] for key, name in PATHS.items()}, CPU_COLUMNS),
        "",
        f"| query over HTTP, {q['rows']:,} rows | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
    ]
    for name, figures in q["queries"].items():
        lines.append(
            f"| {name} | {figures['p50_ms']} | {figures['p95_ms']} | {figures['max_ms']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
