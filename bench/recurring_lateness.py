"""Lateness of recurring triggers with 10,000 active schedules, and the database load it
causes.

Starts the real parts (Kafka, Postgres, two recurring-task-service replicas each beside its
own daprd) on a database of its own (`taskevents_bench`, recreated on every run), stores
10,000 interval schedules (every 60 s, their first occurrences spread evenly over a minute)
and lets them fire for the measured window. Lateness is the Kafka record timestamp of each
`task.recurring.triggered` (set by daprd's producer when it publishes) minus the
occurrence's due time. Database load: `pg_stat_database` deltas of the bench database and
the CPU time of the Postgres backends serving it (from /proc), idle (all schedules waiting)
and firing.

    .venv/bin/python bench/recurring_lateness.py [--schedules 10000] [--window 120]

Prints the figures and writes bench/results/recurring_lateness.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
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
from aiokafka import AIOKafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procfs import cpu_seconds, postgres_pids  # noqa: E402
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
RESULTS = ROOT / "bench" / "results"
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
            until = first_at + timedelta(seconds=window_seconds)
            await sleep_until(until)
            firing_end = await sample(admin, replicas)
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
    expected = count * window_seconds // INTERVAL_SECONDS
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
        "lateness_seconds": {
            "p50": round(percentile(lateness, 50), 3),
            "p90": round(percentile(lateness, 90), 3),
            "p99": round(percentile(lateness, 99), 3),
            "max": round(max(lateness), 3),
            "min": round(min(lateness), 3),
            "mean": round(statistics.fmean(lateness), 3),
        }
        if lateness
        else {},
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
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--window", type=int, default=120, help="seconds of firing measured")
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    result = asyncio.run(run(args.schedules, args.window))
    text = markdown(result)
    sys.stdout.write(text)
    if not args.no_record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "recurring_lateness.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "recurring_lateness.md").write_text(text)
        log(f"recorded in {RESULTS}/recurring_lateness.{{json,md}}")


if __name__ == "__main__":
    main()
