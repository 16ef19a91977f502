"""The whole system under one load (issue 16 §2), smoke level: all four services beside
their sidecars, one mixed stream from the demo generator, WebSocket clients for a share of
the users and recurring schedules firing; the rate ramps up step by step until a consumer
group's lag no longer returns to zero after a step. Reports the highest sustained rate, the
group that fell behind first, per-step lag and CPU per event by process.

    uv run python bench/system_load.py [--start-rate 50] [--factor 1.5] [--steps 8]
        [--step-seconds 20] [--settle-seconds 20] [--users 500] [--ws-share 0.1]
        [--schedules 1000] [--note "…"] [--no-record]

It runs on a stack of its own (Kafka, Postgres, SMTP sink, Sentry on other ports, state in
$SYSTEM_BENCH_STATE, default /tmp/taskevents-system-bench), so the production topic names
are its own and the broker's and database's CPU is the system's alone; the stack is stopped
at the end. Not yet: two replicas where the design allows, the scale-out series, plots,
end-to-end latency at 50 % and 80 % of the highest rate (see bench/README.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STATE = Path(
    os.environ.get("SYSTEM_BENCH_STATE") or Path(tempfile.gettempdir()) / "taskevents-system-bench"
)
PORTS = {
    "KAFKA_PORT": "29092",
    "KAFKA_CONTROLLER_PORT": "29093",
    "PGPORT": "25432",
    "SMTP_PORT": "21025",
    "MAILSINK_HTTP_PORT": "21080",
    "SENTRY_PORT": "50290",
    "SENTRY_HEALTHZ_PORT": "50291",
}
# Before tests.support.stack reads them: the stack of its own (never another database).
os.environ.pop("DATABASE_URL", None)
os.environ.update(
    {
        "TASKEVENTS_STATE": str(STATE),
        **PORTS,
        "KAFKA_BROKERS": f"127.0.0.1:{PORTS['KAFKA_PORT']}",
        "TEST_DATABASE_URL": f"postgresql://taskevents:taskevents@127.0.0.1:{PORTS['PGPORT']}/taskevents",
        "PYTHON": sys.executable,
    }
)

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from bench.common import cpu_table, cpu_us_per_event, machine, record_results, say  # noqa: E402
from bench.procfs import CpuMeter, kafka_pids, one_process, postgres_pids  # noqa: E402
from bench.recurring_lateness import store_schedules  # noqa: E402
from bench.websocket_latency import client_process  # noqa: E402
from taskevents.kafka import kafka_client_options  # noqa: E402
from taskevents_cli.demo import DemoStream  # noqa: E402
from tests.support.cluster import Service, service_spec, start_service  # noqa: E402
from tests.support.stack import RUN_ID, Stack, ensure_stack  # noqa: E402

TOPIC = "task-events"
SERVICES = (
    "audit-log-service",
    "notification-service",
    "recurring-task-service",
    "websocket-service",
)
# Lag at most this many records counts as caught up (a step ends mid-batch).
LAG_SLACK = 10


async def group_lags(admin: AIOKafkaAdminClient, groups: dict[str, str]) -> dict[str, int]:
    """Records on TOPIC not yet committed by each service's consumer group."""
    consumer = AIOKafkaConsumer(**kafka_client_options(os.environ["KAFKA_BROKERS"]))
    await consumer.start()
    try:
        lags = {}
        for name, group in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            mine = {tp: meta.offset for tp, meta in committed.items() if tp.topic == TOPIC}
            ends = await consumer.end_offsets(list(mine)) if mine else {}
            lags[name] = sum(max(0, ends[tp] - max(offset, 0)) for tp, offset in mine.items())
        return lags
    finally:
        await consumer.stop()


def envelope(event: Any) -> tuple[bytes, bytes]:
    data = event.model_dump(mode="json")
    data["payload"] = {**data.get("payload", {}), "sent_at": time.time()}
    cloud = {
        "specversion": "1.0", "id": data["event_id"], "source": "system-bench",
        "type": "com.dapr.event.sent", "datacontenttype": "application/json",
        "topic": TOPIC, "pubsubname": "kafka-pubsub", "data": data,
    }  # fmt: skip
    return json.dumps(cloud).encode(), str(data["task_id"]).encode()


async def produce(
    producer: AIOKafkaProducer, stream: DemoStream, rate: float, seconds: float
) -> int:
    sent, started = 0, time.monotonic()
    total = int(rate * seconds)
    while sent < total:
        delay = started + sent / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        value, key = envelope(stream.next_event())
        await producer.send(TOPIC, value, key=key)
        sent += 1
    await producer.flush()
    return sent


def meter_of(services: dict[str, Service], clients: list[int]) -> CpuMeter:
    groups: dict[str, Any] = {}
    for name, service in services.items():
        groups[name] = one_process(service.app.app.pid if service.app.app else None)
        groups[f"{name} daprd"] = one_process(service.app.sidecar.pid)
    return CpuMeter(
        {
            **groups,
            "postgres": postgres_pids,
            "kafka": kafka_pids,
            "ws clients": lambda: clients,
            "producer": lambda: [os.getpid()],
        }
    )


async def ramp(
    stack: Stack, services: dict[str, Service], args: argparse.Namespace, clients: list[int]
) -> dict[str, Any]:
    groups = {name: s.consumer_groups[0] for name, s in services.items()}
    stream = DemoStream(users=args.users, seed=7, user_prefix=f"sys-{RUN_ID}")
    producer = AIOKafkaProducer(**kafka_client_options(stack.kafka_brokers), linger_ms=5)
    admin = AIOKafkaAdminClient(**kafka_client_options(stack.kafka_brokers))
    await producer.start()
    await admin.start()
    steps: list[dict[str, Any]] = []
    sustained: float | None = None
    first_behind: list[str] = []
    try:
        rate = float(args.start_rate)
        for _ in range(args.steps):
            meter = meter_of(services, clients)
            before = meter.read()
            sent = await produce(producer, stream, rate, args.step_seconds)
            lag_trace = []
            settled_at = None
            for second in range(int(args.settle_seconds) + 1):
                lags = await group_lags(admin, groups)
                lag_trace.append(lags)
                for service in services.values():
                    service.check_alive()
                if all(v <= LAG_SLACK for v in lags.values()):
                    settled_at = second
                    break
                await asyncio.sleep(1.0)
            used = CpuMeter.used(before, meter.read())
            step = {
                "rate": round(rate, 1),
                "events": sent,
                "caught_up_after_seconds": settled_at,
                "lag_at_end_of_step": lag_trace[0],
                "lag_at_end_of_settle": lag_trace[-1],
                "cpu_us_per_event": cpu_us_per_event(used, sent),
            }
            say(f"  {rate:.0f}/s: lag after the step {lag_trace[0]}, caught up after {settled_at}s")
            steps.append(step)
            if settled_at is None:
                last = lag_trace[-1]
                first_behind = sorted(last, key=lambda n: -last[n])
                first_behind = [n for n in first_behind if last[n] > LAG_SLACK]
                break
            sustained = rate
            rate *= args.factor
    finally:
        await producer.stop()
        await admin.close()
    return {
        "highest_sustained_rate": sustained,
        "fell_behind_first": first_behind,
        "steps": steps,
    }


def markdown(record: dict[str, Any]) -> str:
    r = record["ramp"]
    lines = [
        f"# The whole system under one load ({record['date']})",
        "",
        f"All four services, one replica each, beside their sidecars; the demo generator's mix "
        f"for {record['settings']['users']} users, WebSocket clients for "
        f"{record['settings']['ws_clients']} of them, {record['settings']['schedules']} "
        "interval schedules (every 60 s) firing. Each step produces at its rate for "
        f"{record['settings']['step_seconds']} s, then waits up to "
        f"{record['settings']['settle_seconds']} s for every consumer group's lag to return "
        "to zero.",
        "",
        f"Highest sustained rate: **{r['highest_sustained_rate']}** events/s; fell behind "
        f"first: **{', '.join(r['fell_behind_first']) or 'none within the steps'}**.",
        "",
        "| events/s | events | caught up after s | lag after the step (by service) |",
        "|---:|---:|---:|---|",
    ]
    for step in r["steps"]:
        lag = ", ".join(f"{k.split('-')[0]} {v}" for k, v in step["lag_at_end_of_step"].items())
        lines.append(
            f"| {step['rate']} | {step['events']} | {step['caught_up_after_seconds']} | {lag} |"
        )
    last = r["steps"][-1]["cpu_us_per_event"] if r["steps"] else {}
    columns = [c for c in last if c != "all"]
    lines += ["", "CPU µs per event by process, each step:", ""]
    lines += cpu_table({str(s["rate"]): s["cpu_us_per_event"] for s in r["steps"]}, columns)
    if record.get("note"):
        lines += ["", f"Note: {record['note']}"]
    return "\n".join(lines) + "\n"


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--start-rate", type=float, default=50)
    parser.add_argument("--factor", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--step-seconds", type=float, default=20)
    parser.add_argument("--settle-seconds", type=float, default=20)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--ws-share", type=float, default=0.1, help="users with a WebSocket")
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--note", default="")
    parser.add_argument("--no-record", action="store_true", help="print only")
    parser.add_argument("--keep-stack", action="store_true", help="leave the own stack up")
    args = parser.parse_args()
    say(f"==> a stack of its own in {STATE}")
    # KAFKA_BROKERS set would tell stack.sh to use that broker instead of starting its own.
    own = {k: v for k, v in os.environ.items() if k != "KAFKA_BROKERS"}
    up = ["bash", str(ROOT / "scripts" / "stack.sh"), "up"]
    await asyncio.to_thread(subprocess.run, up, env=own, check=True, stdout=subprocess.DEVNULL)
    stack = ensure_stack()
    services: dict[str, Service] = {}
    context = multiprocessing.get_context("spawn")
    processes = []
    stop = context.Event()
    try:
        for name in SERVICES:
            spec, group = service_spec(stack, name, replica=200, env={"LOG_LEVEL": "WARNING"})
            spec.log_level = "warn"
            services[name] = start_service(stack, spec, group, replica=200)
            say(f"  {name} up")
        first_at = datetime.now(UTC) + timedelta(seconds=5)
        await store_schedules(stack.database_url, args.schedules, first_at, f"sys-{RUN_ID}")
        ws_users = [f"sys-{RUN_ID}-{u}" for u in range(int(args.users * args.ws_share))]
        port = services["websocket-service"].app.spec.app_port
        results = context.Queue()
        start = context.Event()
        for first in range(0, len(ws_users), 250):
            ready = context.Event()
            process = context.Process(
                target=client_process,
                args=(
                    f"ws://127.0.0.1:{port}/ws",
                    ws_users[first : first + 250],
                    ready,
                    start,
                    stop,
                    results,
                ),
            )
            process.start()
            processes.append((process, ready))
        for _, ready in processes:
            if not await asyncio.to_thread(ready.wait, 120):
                raise TimeoutError("the WebSocket clients did not connect within 120 s")
        start.set()
        say(f"==> ramp from {args.start_rate}/s, times {args.factor} a step")
        record: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "note": args.note,
            "settings": {
                "users": args.users,
                "ws_clients": len(ws_users),
                "schedules": args.schedules,
                "step_seconds": args.step_seconds,
                "settle_seconds": args.settle_seconds,
                "replicas": 1,
            },
            "ramp": await ramp(stack, services, args, [p.pid for p, _ in processes if p.pid]),
        }
    finally:
        stop.set()
        for process, _ in processes:
            process.join(120)
            if process.is_alive():
                process.kill()
        for service in services.values():
            service.app.stop()
        if not args.keep_stack:
            down = ["bash", str(ROOT / "scripts" / "stack.sh"), "down"]  # its own stack only
            await asyncio.to_thread(subprocess.run, down, env=own, check=False)
    record_results("system_load", record, markdown(record), no_record=args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
