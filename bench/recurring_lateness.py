"""Lateness of recurring triggers with 10,000 active schedules, and the database load it
causes.

Starts the real parts (Kafka, Postgres, two recurring-task-service replicas each beside its
own daprd) on a database of its own (`taskevents_bench`, recreated on every run), stores
10,000 interval schedules (every 60 s, their first occurrences spread evenly over a minute)
and lets them fire for the measured window. Lateness is the Kafka record timestamp of each
`task.recurring.triggered` (set by daprd's producer when it publishes) minus the
occurrence's due time. Database load: `pg_stat_database` deltas of the bench database and
the CPU time of the Postgres backends serving it (from /proc), idle (all schedules waiting)
and firing. The baseline, after the service's window, in the same run: a plain timer loop
(one asyncio task) publishing the same occurrences straight to Kafka (aiokafka, a topic of
its own) when they are due, for as long; its lateness measured the same way, and the CPU per
occurrence by process for both.

    .venv/bin/python bench/recurring_lateness.py [--schedules 10000] [--window 120]

Prints the figures and writes bench/results/recurring_lateness.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import compare_turns, cpu_table, cpu_us_per_event, record_results  # noqa: E402
from bench.procfs import CpuMeter, cpu_seconds, kafka_pids, postgres_pids  # noqa: E402
from recurring_task_service.adapters.postgres import (  # noqa: E402
    MIGRATION_LEDGER,
    PostgresSchedules,
)
from recurring_task_service.schedules import (  # noqa: E402
    NewSchedule,
    ScheduleOptions,
    first_occurrence,
    interval_rule,
)
from recurring_task_service.settings import PACKAGE  # noqa: E402
from taskevents.kafka import kafka_client_options  # noqa: E402
from taskevents.postgres import (  # noqa: E402
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    migrate,
    packaged_migrations,
)
from tests.support.cluster import Service, service_spec, start_service  # noqa: E402
from tests.support.kafka import TOPIC, end_offsets  # noqa: E402
from tests.support.stack import RUN_ID, Stack, ensure_stack  # noqa: E402

BENCH_DATABASE = "taskevents_bench"
INTERVAL_SECONDS = 60
REPLICAS = 2
TARGET_P99_SECONDS = 1.0
STAT_COLUMNS = (
    "xact_commit",
    "xact_rollback",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_read",
    "blks_hit",
)


async def sleep_until(when: datetime) -> None:
    """The measured windows are fixed stretches of wall-clock time."""
    await asyncio.sleep(max(0.0, (when - datetime.now(UTC)).total_seconds()))


def log(message: str) -> None:
    sys.stderr.write(f"[{datetime.now(UTC):%H:%M:%S}] {message}\n")
    sys.stderr.flush()


@dataclass
class LoadSample:
    at: float
    stats: dict[str, int]
    backend_cpu_seconds: dict[int, float]
    postgres_cpu_seconds: dict[int, float]
    service_cpu_seconds: float
    sidecar_cpu_seconds: float


async def sample(admin: asyncpg.Connection, replicas: list[Service]) -> LoadSample:
    row = await admin.fetchrow(
        f"SELECT {', '.join(STAT_COLUMNS)} FROM pg_stat_database WHERE datname = $1",  # noqa: S608
        BENCH_DATABASE,
    )
    backends = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        BENCH_DATABASE,
    )
    apps = [pid for r in replicas if r.app.app and (pid := r.app.app.pid)]
    sidecars = [pid for r in replicas if (pid := r.app.sidecar.pid)]
    return LoadSample(
        at=time.monotonic(),
        stats={column: int(row[column]) for column in STAT_COLUMNS},
        backend_cpu_seconds={r["pid"]: cpu_seconds(r["pid"]) for r in backends},
        postgres_cpu_seconds={pid: cpu_seconds(pid) for pid in postgres_pids()},
        service_cpu_seconds=sum(cpu_seconds(pid) for pid in apps),
        sidecar_cpu_seconds=sum(cpu_seconds(pid) for pid in sidecars),
    )


def cpu_used(start: dict[int, float], end: dict[int, float]) -> float:
    """CPU seconds between two samples of the processes alive at the end (one started in
    between counts whole; one that ended in between is lost, which undercounts a little)."""
    return sum(seconds - start.get(pid, 0.0) for pid, seconds in end.items())


def load_between(start: LoadSample, end: LoadSample) -> dict[str, Any]:
    seconds = end.at - start.at
    per_second = {
        f"{column}_per_s": round((end.stats[column] - start.stats[column]) / seconds, 1)
        for column in STAT_COLUMNS
    }
    return {
        "seconds": round(seconds, 1),
        **per_second,
        "bench_backends_cpu_percent": round(
            100 * cpu_used(start.backend_cpu_seconds, end.backend_cpu_seconds) / seconds, 1
        ),
        "all_postgres_cpu_percent": round(
            100 * cpu_used(start.postgres_cpu_seconds, end.postgres_cpu_seconds) / seconds, 1
        ),
        "services_cpu_percent": round(
            100 * (end.service_cpu_seconds - start.service_cpu_seconds) / seconds, 1
        ),
        "sidecars_cpu_percent": round(
            100 * (end.sidecar_cpu_seconds - start.sidecar_cpu_seconds) / seconds, 1
        ),
    }


async def recreate_database(stack: Stack) -> str:
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(stack.database_url)._replace(path=f"/{BENCH_DATABASE}"))


async def store_schedules(url: str, count: int, first_at: datetime, prefix: str) -> None:
    await migrate(url, packaged_migrations(PACKAGE), MIGRATION_LEDGER, connect_timeout_seconds=10.0)
    pool = await create_pool(url, PoolSettings(max_size=8))
    try:
        store = PostgresSchedules(pool, SchemaStatus(migrated=True))
        rule = interval_rule(INTERVAL_SECONDS)
        spacing = timedelta(seconds=INTERVAL_SECONDS) / count

        async def one(i: int) -> None:
            options = ScheduleOptions(starts_at=first_at + i * spacing)
            await store.create(
                NewSchedule(
                    task_id=f"{prefix}-{i}",
                    user_id=f"{prefix}-user-{i % 100}",
                    rule=rule,
                    payload={"title": f"bench {i}"},
                    next_fire_at=first_occurrence(rule, datetime.now(UTC), options),
                    options=options,
                )
            )

        for start in range(0, count, 200):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 200, count))))
    finally:
        await close_pool(pool)


async def read_lateness(
    brokers: str, start: dict[TopicPartition, int], prefix: str, until: datetime
) -> list[float]:
    """Lateness in seconds of every triggered event of the bench's tasks due before
    `until`."""
    consumer = AIOKafkaConsumer(**kafka_client_options(brokers), enable_auto_commit=False)
    await consumer.start()
    lateness: list[float] = []
    slow: list[datetime] = []
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        while True:
            batch = await consumer.getmany(timeout_ms=3000, max_records=5000)
            if not batch:
                if slow:
                    seconds = sorted({f"{d:%T}" for d in slow})
                    log(f"{len(slow)} later than 1 s, due in the seconds {', '.join(seconds)}")
                return lateness
            for records in batch.values():
                for record in records:
                    try:
                        data = json.loads(record.value or b"null").get("data") or {}
                    except (json.JSONDecodeError, AttributeError):
                        continue
                    if not str(data.get("task_id", "")).startswith(prefix):
                        continue
                    due = datetime.fromisoformat(data["payload"]["occurrence"])
                    if due < until:
                        late = record.timestamp / 1000 - due.timestamp()
                        lateness.append(late)
                        if late > 1.0:
                            slow.append(due)
    finally:
        await consumer.stop()


async def metrics_lateness(replicas: list[Service]) -> dict[str, float]:
    """The replicas' own histogram (claim→publish as the service sees it), summed."""
    buckets: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as http:
        for replica in replicas:
            if not replica.app.app or not replica.app.app.alive:
                continue
            text = (await http.get(f"{replica.url}/metrics")).text
            for line in text.splitlines():
                if line.startswith("taskevents_recurring_trigger_lateness_seconds_bucket"):
                    le = line.split('le="')[1].split('"')[0]
                    buckets[le] = buckets.get(le, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def cpu_meter(replicas: list[Service]) -> CpuMeter:
    """Where the CPU of the firing goes: the replicas, their sidecars, Postgres, the broker,
    and this process (for the baseline, the timer loop and its producer)."""
    return CpuMeter(
        {
            "service": lambda: [p for r in replicas if r.app.app and (p := r.app.app.pid)],
            "daprd": lambda: [p for r in replicas if (p := r.app.sidecar.pid)],
            "postgres": postgres_pids,
            "kafka": kafka_pids,
            "benchmark process": lambda: [os.getpid()],
        }
    )


CPU_COLUMNS = ("service", "daprd", "postgres", "kafka", "benchmark process")


async def direct_timer_loop(
    brokers: str, topic: str, count: int, first_at: datetime, until: datetime, prefix: str
) -> int:
    """The baseline: the same occurrences (`count` schedules every INTERVAL_SECONDS, the
    first ones spread evenly over an interval from `first_at`), each published straight to
    Kafka by one asyncio loop when it is due, until `until`; how many it published."""
    spacing = timedelta(seconds=INTERVAL_SECONDS) / count
    producer = AIOKafkaProducer(**kafka_client_options(brokers), linger_ms=0, acks="all")
    await producer.start()
    sent = 0
    try:
        for round_number in itertools.count():
            for i in range(count):
                due = first_at + timedelta(seconds=round_number * INTERVAL_SECONDS) + i * spacing
                if due >= until:
                    return sent
                await sleep_until(due)
                task_id = f"{prefix}-{i}"
                data = {
                    "event_id": f"{task_id}-{due.isoformat()}",
                    "type": "task.recurring.triggered",
                    "task_id": task_id,
                    "user_id": f"{prefix}-user-{i % 100}",
                    "timestamp": datetime.now(UTC).isoformat(),
                    "payload": {"title": f"bench {i}", "occurrence": due.isoformat()},
                }
                envelope = {"specversion": "1.0", "id": data["event_id"], "data": data}
                await producer.send(topic, json.dumps(envelope).encode(), key=task_id.encode())
                sent += 1
        raise AssertionError("unreachable")
    finally:
        await producer.flush()
        await producer.stop()


async def direct_baseline(
    stack: Stack, count: int, window_seconds: int, prefix: str
) -> tuple[list[float], dict[str, float], int]:
    """Lateness of the timer loop over a window as long as the service's, CPU used, count."""
    topic = f"recurring-bench-direct-{RUN_ID}"
    admin = AIOKafkaAdminClient(**kafka_client_options(stack.kafka_brokers))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 6, 1)])
        start_offsets = await end_offsets(stack.kafka_brokers, topic)
        first_at = datetime.now(UTC) + timedelta(seconds=2)
        until = first_at + timedelta(seconds=window_seconds)
        meter = cpu_meter([])
        before = meter.read()
        sent = await direct_timer_loop(
            stack.kafka_brokers, topic, count, first_at, until, f"{prefix}-direct"
        )
        used = CpuMeter.used(before, meter.read())
        lateness = await read_lateness(stack.kafka_brokers, start_offsets, prefix, until)
    finally:
        await admin.delete_topics([topic])
        await admin.close()
    return lateness, used, sent


def lateness_figures(lateness: list[float]) -> dict[str, float]:
    if not lateness:
        return {}
    return {
        "p50": round(percentile(lateness, 50), 3),
        "p90": round(percentile(lateness, 90), 3),
        "p99": round(percentile(lateness, 99), 3),
        "max": round(max(lateness), 3),
        "min": round(min(lateness), 3),
        "mean": round(statistics.fmean(lateness), 3),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])

    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "unknown"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
        "shared": "yes: other sessions ran tests and services on the same 2 cores, Kafka and "
        "Postgres during the run",
        "daprd": version([str(Path.home() / ".dapr" / "bin" / "daprd"), "--version"]),
    }


async def run(count: int, window_seconds: int) -> dict[str, Any]:
    stack = ensure_stack()
    url = await recreate_database(stack)
    prefix = f"bench-{RUN_ID}"
    replicas: list[Service] = []
    try:
        for replica in range(1, REPLICAS + 1):
            spec, consumer = service_spec(
                stack,
                "recurring-task-service",
                replica=100 + replica,
                env={
                    "DATABASE_URL": url,
                    "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
                },
            )
            replicas.append(start_service(stack, spec, consumer, replica=100 + replica))
        log(f"{REPLICAS} replicas up; storing {count} schedules")
        first_at = datetime.now(UTC) + timedelta(seconds=45)
        stored = time.monotonic()
        await store_schedules(url, count, first_at, prefix)
        log(f"stored in {time.monotonic() - stored:.1f}s; first occurrence at {first_at:%T}")
        start_offsets = await end_offsets(stack.kafka_brokers, TOPIC)
        admin = await asyncpg.connect(stack.database_url)
        try:
            idle_start = await sample(admin, replicas)
            await sleep_until(first_at - timedelta(seconds=2))
            idle_end = await sample(admin, replicas)
            await sleep_until(first_at)
            log(f"firing for {window_seconds}s")
            firing_start = await sample(admin, replicas)
            meter = cpu_meter(replicas)
            cpu_before = meter.read()
            until = first_at + timedelta(seconds=window_seconds)
            await sleep_until(until)
            firing_end = await sample(admin, replicas)
            cpu_used_firing = CpuMeter.used(cpu_before, meter.read())
            database_size = await admin.fetchval("SELECT pg_database_size($1)", BENCH_DATABASE)
            postgres_version = await admin.fetchval("SHOW server_version")
        finally:
            await admin.close()
        histogram = await metrics_lateness(replicas)
    finally:
        for service in replicas:
            service.app.stop()
    log("reading the topic")
    lateness = await read_lateness(stack.kafka_brokers, start_offsets, prefix, until)
    log(f"the baseline: a timer loop publishing straight to Kafka for {window_seconds}s")
    direct_lateness, direct_cpu, direct_sent = await direct_baseline(
        stack, count, window_seconds, prefix
    )
    expected = count * window_seconds // INTERVAL_SECONDS
    dapr_figures, direct_figures = lateness_figures(lateness), lateness_figures(direct_lateness)
    return {
        "benchmark": "recurring_lateness",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "schedules": count,
            "interval_seconds": INTERVAL_SECONDS,
            "replicas": REPLICAS,
            "poll_seconds": 0.5,
            "claim_batch_size": 100,
            "window_seconds": window_seconds,
            "database": BENCH_DATABASE,
        },
        "occurrences_expected": expected,
        "occurrences_published": len(lateness),
        "lateness_seconds": dapr_figures,
        "direct": {
            "occurrences_published": len(direct_lateness),
            "occurrences_sent": direct_sent,
            "lateness_seconds": direct_figures,
        },
        "vs_direct": compare_turns([dapr_figures], [direct_figures], ("p50", "p99"))
        if dapr_figures and direct_figures
        else {},
        "cpu_us_per_occurrence": {
            "dapr": cpu_us_per_event(cpu_used_firing, len(lateness)),
            "direct": cpu_us_per_event(direct_cpu, len(direct_lateness)),
        },
        "target_p99_seconds": TARGET_P99_SECONDS,
        "service_histogram_buckets": histogram,
        "database_load": {
            "idle_all_waiting": load_between(idle_start, idle_end),
            "firing": load_between(firing_start, firing_end),
            "database_size_mb": round(database_size / 1024 / 1024, 1),
        },
        "versions": {
            "postgres": postgres_version,
            "kafka": "4.3.1 (KRaft, one node)",
            "dapr_python_sdk": "1.18.3",
            "asyncpg": asyncpg.__version__,
            "apscheduler": "3.11.3",
        },
        "machine": machine(),
    }


def direct_lines(result: dict[str, Any]) -> list[str]:
    """The service against the plain timer loop (the baseline), and CPU per occurrence."""
    direct, versus = result["direct"], result["vs_direct"]
    lines = [
        "Against the baseline, a plain timer loop publishing the same occurrences straight to "
        "Kafka (one asyncio task, aiokafka), run after the service's window for as long "
        f"({direct['occurrences_published']:,} occurrences):",
        "",
        "| lateness s | service (Dapr) | timer loop (direct) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for name in ("p50", "p99"):
        figures = versus.get(name)
        if figures:
            lines.append(
                f"| {name} | {figures['dapr']} | {figures['direct']} | {figures['ratio']} |"
            )
    cpu = result["cpu_us_per_occurrence"]
    lines += [
        "",
        "CPU µs per occurrence while firing (benchmark process: for the baseline, the loop):",
        "",
        *cpu_table(
            {"service (Dapr)": cpu["dapr"], "timer loop (direct)": cpu["direct"]}, CPU_COLUMNS
        ),
    ]
    return lines


def markdown(result: dict[str, Any]) -> str:
    lat = result["lateness_seconds"]
    idle = result["database_load"]["idle_all_waiting"]
    firing = result["database_load"]["firing"]
    setup = result["setup"]
    rows = [
        ("xact/s (commits)", idle["xact_commit_per_s"], firing["xact_commit_per_s"]),
        ("tuples returned/s", idle["tup_returned_per_s"], firing["tup_returned_per_s"]),
        ("tuples fetched/s", idle["tup_fetched_per_s"], firing["tup_fetched_per_s"]),
        ("tuples inserted/s", idle["tup_inserted_per_s"], firing["tup_inserted_per_s"]),
        ("tuples updated/s", idle["tup_updated_per_s"], firing["tup_updated_per_s"]),
        ("tuples deleted/s", idle["tup_deleted_per_s"], firing["tup_deleted_per_s"]),
        ("blocks read/s (disk)", idle["blks_read_per_s"], firing["blks_read_per_s"]),
        (
            "CPU of the bench DB's backends",
            f"{idle['bench_backends_cpu_percent']}%",
            f"{firing['bench_backends_cpu_percent']}%",
        ),
        (
            "CPU of all postgres processes (shared server)",
            f"{idle['all_postgres_cpu_percent']}%",
            f"{firing['all_postgres_cpu_percent']}%",
        ),
        (
            "CPU of the 2 service replicas",
            f"{idle['services_cpu_percent']}%",
            f"{firing['services_cpu_percent']}%",
        ),
        (
            "CPU of the 2 daprd sidecars",
            f"{idle['sidecars_cpu_percent']}%",
            f"{firing['sidecars_cpu_percent']}%",
        ),
    ]
    m = result["machine"]
    v = result["versions"]
    lines = [
        f"# recurring-task-service: trigger lateness with {setup['schedules']:,} active schedules",
        "",
        f"Run {result['when']} with `bench/recurring_lateness.py`: {setup['schedules']:,} interval "
        f"schedules (every {setup['interval_seconds']} s, spread evenly, so about "
        f"{setup['schedules'] / setup['interval_seconds']:.0f} occurrences/s), "
        f"{setup['replicas']} replicas each beside its own daprd, poll "
        f"{setup['poll_seconds']} s, claim batch {setup['claim_batch_size']}, measured over "
        f"{setup['window_seconds']} s. Lateness = Kafka record timestamp (daprd's producer) minus "
        "due time.",
        "",
        "| lateness | seconds |",
        "|---|---|",
        *(f"| {name} | {lat.get(name)} |" for name in ("p50", "p90", "p99", "max", "mean")),
        f"| occurrences published / due in the window | {result['occurrences_published']:,} / "
        f"{result['occurrences_expected']:,} |",
        f"| target p99 | < {result['target_p99_seconds']} |",
        "",
        *direct_lines(result),
        "",
        "| database load | idle (all waiting) | firing |",
        "|---|---|---|",
        *(f"| {name} | {a} | {b} |" for name, a, b in rows),
        "",
        f"Database size after the run: {result['database_load']['database_size_mb']} MB.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, "
        f"Python {m['python']}, load average at start {m['load_average_at_start']}. "
        f"**Shared**: {m['shared']}.",
        f"Versions: PostgreSQL {v['postgres']}, Kafka {v['kafka']}, daprd {m['daprd']}, "
        f"Dapr Python SDK {v['dapr_python_sdk']}, asyncpg {v['asyncpg']}, "
        f"APScheduler {v['apscheduler']}.",
        "",
        *([f"Note: {result['note']}", ""] if result.get("note") else []),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=120, help="seconds of firing measured")
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument("--note", default="", help="recorded with the results")
    args = parser.parse_args()
    result = asyncio.run(run(args.schedules, args.window))
    result["note"] = args.note
    record_results("recurring_lateness", result, markdown(result), no_record=args.no_record)


if __name__ == "__main__":
    main()
