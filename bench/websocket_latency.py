"""Publish-to-client latency of websocket-service, and the most connections one process
holds.

One websocket-service beside a real daprd consumes a topic of its own (`taskevents-bench`,
so the benchmark's load never reaches the other consumers of `task-events`) from the local
Kafka. Events are produced straight to Kafka (aiokafka) at a fixed rate, each carrying its
send time; the clients, one user each, run in separate processes and record the latency
of every event they receive. Figures: p50/p99/max per (clients, events/s), and whether
every event arrived. Beside it, taking turns with it, the baseline: the same app fed by an
aiokafka consumer in its own process (bench/websocket_direct.py, no Dapr) on a topic of its
own; the ratio Dapr / direct of p50, p99 and CPU per event by process.
Results: bench/results/websocket_latency.{json,md} (not with --no-record).

    uv run python bench/websocket_latency.py            # the full matrix, 3 runs a cell (~8 min)
    uv run python bench/websocket_latency.py --quick    # one short run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import websockets
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    compare_turns,
    cpu_table,
    cpu_us_per_event,
    free_port,
    percentile,
    ratio,
    record_results,
)
from bench.procfs import CpuMeter, kafka_pids, one_process, rss_kib  # noqa: E402
from taskevents.kafka import kafka_client_options  # noqa: E402
from taskevents.settings import DEVELOPMENT_JWT_SECRET  # noqa: E402
from tests.support.cluster import Service, daprd_env, service_spec  # noqa: E402
from tests.support.stack import Stack, ensure_stack  # noqa: E402

BENCH_TOPIC = "taskevents-bench"
DIRECT_TOPIC = "taskevents-bench-direct"
CLIENTS_PER_PROCESS = 250
MOST_CONNECTIONS_TRIED = 20_000
FD_HEADROOM = 1000
CONNECT_BATCH = 50
QUIET_SECONDS = 2.0
WARMUP_SECONDS = 1.0
DRAIN_SECONDS = 90.0


def token(user_id: str) -> str:
    import jwt

    claims = {"sub": user_id, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, DEVELOPMENT_JWT_SECRET, algorithm="HS256")


# --- client processes ---------------------------------------------------------------------


def client_process(
    url: str, users: list[str], ready: Any, start: Any, stop: Any, results: Any
) -> None:
    asyncio.run(_clients(url, users, ready, start, stop, results))


async def _clients(
    url: str, users: list[str], ready: Any, start: Any, stop: Any, results: Any
) -> None:
    latencies: list[float] = []
    received = 0
    sockets: list[websockets.ClientConnection] = []

    async def read(client: websockets.ClientConnection) -> None:
        nonlocal received
        try:
            async for message in client:
                now = time.time()
                frame = json.loads(message)
                frames = frame["frames"] if frame["kind"] == "batch" else [frame]
                for item in frames:
                    if item["kind"] == "event":
                        payload = item["event"]["payload"]
                        sent_at = payload.get("sent_at")
                        if sent_at is not None and start.is_set() and not payload.get("warmup"):
                            latencies.append(now - sent_at)
                            received += 1
        except websockets.ConnectionClosed:
            pass

    for first in range(0, len(users), CONNECT_BATCH):
        batch = users[first : first + CONNECT_BATCH]
        opened = await asyncio.gather(
            *(websockets.connect(f"{url}?token={token(u)}", open_timeout=60) for u in batch)
        )
        sockets.extend(opened)
    readers = [asyncio.create_task(read(s)) for s in sockets]
    ready.set()
    await asyncio.to_thread(stop.wait)
    # Every event in flight arrives late rather than never: wait until the stream is quiet.
    deadline = time.monotonic() + DRAIN_SECONDS
    seen = -1
    while received != seen and time.monotonic() < deadline:
        seen = received
        await asyncio.sleep(QUIET_SECONDS)
    for s in sockets:
        await s.close()
    await asyncio.gather(*readers)
    results.put({"latencies": latencies, "received": received})


# --- the producer ---------------------------------------------------------------------------


async def produce(
    brokers: str,
    users: list[str],
    rate: int,
    seconds: float,
    warmup_seconds: float = 0.0,
    topic: str = BENCH_TOPIC,
) -> tuple[int, float]:
    """Events at `rate` per second, round-robin over the users; (count, achieved rate)."""
    producer = AIOKafkaProducer(**kafka_client_options(brokers), linger_ms=0, acks=1)
    await producer.start()
    sent = 0
    warmup = int(rate * warmup_seconds)  # sent first, not measured (producer, fetch warm-up)
    total = warmup + int(rate * seconds)
    started = time.monotonic()
    try:
        while sent < total:
            due = started + sent / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            user = users[sent % len(users)]
            event_id = str(uuid.uuid4())
            data = {
                "event_id": event_id,
                "type": "task.updated",
                "task_id": f"{user}-task",
                "user_id": user,
                "timestamp": datetime.now(UTC).isoformat(),
                "schema_version": 1,
                "payload": {"title": "bench", "sent_at": time.time(), "warmup": sent < warmup},
            }
            envelope = {
                "specversion": "1.0", "id": event_id, "source": "bench",
                "type": "com.dapr.event.sent", "datacontenttype": "application/json",
                "topic": topic, "pubsubname": "websocket-pubsub", "data": data,
            }  # fmt: skip
            await producer.send(topic, json.dumps(envelope).encode(), key=user.encode())
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent - warmup, sent / (time.monotonic() - started)


# --- the service ---------------------------------------------------------------------------


async def ensure_topic(brokers: str) -> None:
    admin = AIOKafkaAdminClient(**kafka_client_options(brokers))
    await admin.start()
    try:
        for topic in (BENCH_TOPIC, DIRECT_TOPIC):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()


def allow_subscription(component: Path, app_id: str, topic: str) -> None:
    """The component's `subscriptionScopes` let `app_id` subscribe to `topic` too (daprd
    refuses a subscription its scopes do not name)."""
    import yaml

    document = yaml.safe_load(component.read_text())
    for entry in document["spec"]["metadata"]:
        if entry["name"] == "subscriptionScopes":
            scopes = dict(part.split("=", 1) for part in entry["value"].split(";") if part)
            scopes[app_id] = ",".join(filter(None, [topic, scopes.get(app_id, "")]))
            entry["value"] = ";".join(f"{app}={topics}" for app, topics in scopes.items())
    component.write_text(yaml.safe_dump(document, sort_keys=False))


def start_service(stack: Stack, env: dict[str, str]) -> Service:
    from taskevents_cli.devrun import start_app

    spec, group = service_spec(
        stack, "websocket-service", replica=90, env={"LOG_LEVEL": "WARNING", **env}
    )
    spec.log_level = "warn"
    # Only the service's own subscription, moved to the benchmark's topic.
    resources = spec.resources_paths[0]
    for path in resources.glob("*.yaml"):
        text = path.read_text()
        if "kind: Subscription" in text:
            if "websocket-pubsub" in text:
                path.write_text(text.replace("topic: task-events\n", f"topic: {BENCH_TOPIC}\n"))
            else:
                path.unlink()
    allow_subscription(resources / "websocket-pubsub.yaml", "websocket-service", BENCH_TOPIC)
    app = start_app(
        spec, daprd=stack.daprd, log_dir=stack.log_dir / "bench", daprd_env=daprd_env(stack)
    )
    app.wait_ready()
    return Service(app=app, consumer_groups=[group])


@dataclass
class Target:
    """One path under test: the Dapr one (websocket-service beside daprd) or the direct one
    (the same app fed by aiokafka); its clients connect to `port`, its events go to `topic`."""

    name: str
    port: int
    topic: str
    service_pid: int | None
    daprd_pid: int | None
    check_alive: Callable[[], None] = field(default=lambda: None)


def dapr_target(service: Service) -> Target:
    assert service.app.spec.app_port is not None
    return Target(
        name="dapr",
        port=service.app.spec.app_port,
        topic=BENCH_TOPIC,
        service_pid=service.app.app.pid if service.app.app else None,
        daprd_pid=service.app.sidecar.pid if service.app.sidecar else None,
        check_alive=service.check_alive,
    )


def start_direct(
    stack: Stack, env: dict[str, str], log_dir: Path
) -> tuple[subprocess.Popen[bytes], Target]:
    """The baseline process (bench/websocket_direct.py), on a consumer group of its own."""
    port = free_port()
    settings = {
        "TASKEVENTS_ENV": "development",
        "LOG_LEVEL": "WARNING",
        "APP_PORT": str(port),
        "DAPR_HTTP_PORT": str(free_port()),  # nothing answers: no resume, as intended
        "KAFKA_BROKERS": stack.kafka_brokers,
        "BENCH_DIRECT_TOPIC": DIRECT_TOPIC,
        "BENCH_DIRECT_GROUP": f"websocket-bench-direct-{uuid.uuid4().hex[:8]}",
        **env,
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "websocket-direct.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "websocket_direct.py")],
            env={**os.environ, **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def check_alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"the direct consumer exited ({process.returncode}), see {log_dir}")

    target = Target(
        name="direct",
        port=port,
        topic=DIRECT_TOPIC,
        service_pid=process.pid,
        daprd_pid=None,
        check_alive=check_alive,
    )
    return process, target


async def wait_until_delivering(stack: Stack, target: Target) -> None:
    """A probe client gets an event produced now: the consumer group has its partitions."""
    user = f"probe-{uuid.uuid4().hex[:6]}"
    url = f"ws://127.0.0.1:{target.port}/ws?token={token(user)}"
    deadline = time.monotonic() + 120
    while True:  # the direct process may still be starting
        try:
            client = await websockets.connect(url)
            break
        except OSError:
            target.check_alive()
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    async with client:
        await client.recv()  # welcome
        while time.monotonic() < deadline:
            await produce(stack.kafka_brokers, [user], rate=50, seconds=0.1, topic=target.topic)
            try:
                async with asyncio.timeout(3):
                    while json.loads(await client.recv())["kind"] != "event":
                        pass
                return
            except TimeoutError:
                target.check_alive()
        raise TimeoutError(f"the benchmark's {target.name} service never received an event")


async def connection_count(port: int) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        return int((await http.get(f"http://127.0.0.1:{port}/health")).json()["connections"])


async def all_closed(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout * 5)):
        if await connection_count(port) == 0 or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


# --- runs -----------------------------------------------------------------------------------


@dataclass
class Run:
    path: str
    clients: int
    rate: int
    seconds: float
    published: int
    achieved_rate: float
    received: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_cores: dict[str, float]
    cpu_us_per_event: dict[str, int]


CPU_COLUMNS = ("service", "daprd", "kafka", "clients", "producer")


def cpu_meter(target: Target, clients: list[int]) -> CpuMeter:
    """CPU of the service, its sidecar (none for the direct path), the broker, the client
    processes and this process (the producer) while the events are produced."""
    return CpuMeter(
        {
            "service": one_process(target.service_pid),
            "daprd": one_process(target.daprd_pid),
            "kafka": kafka_pids,
            "clients": lambda: clients,
            "producer": lambda: [os.getpid()],
        }
    )


async def measure(
    stack: Stack, target: Target, clients: int, rates: list[int], seconds: float
) -> list[Run]:
    run_id = uuid.uuid4().hex[:6]
    users = [f"bench-{run_id}-{i}" for i in range(clients)]
    url = f"ws://127.0.0.1:{target.port}/ws"
    context = multiprocessing.get_context("spawn")
    runs = []
    for rate in rates:
        start, stop = context.Event(), context.Event()
        results = context.Queue()
        groups = [
            users[i : i + CLIENTS_PER_PROCESS] for i in range(0, clients, CLIENTS_PER_PROCESS)
        ]
        if len(groups) == 1 and clients >= 2:
            groups = [users[: clients // 2], users[clients // 2 :]]  # always 2+ processes
        processes = []
        readies = []
        for group in groups:
            ready_one = context.Event()
            process = context.Process(
                target=client_process, args=(url, group, ready_one, start, stop, results)
            )
            process.start()
            processes.append(process)
            readies.append(ready_one)
        while not all(r.is_set() for r in readies):
            await asyncio.sleep(0.2)
            target.check_alive()
            for process in processes:
                if process.exitcode not in (None, 0):
                    raise RuntimeError(f"a client process died ({process.exitcode})")
        meter = cpu_meter(target, [p.pid for p in processes if p.pid is not None])
        cpu_before, clock = meter.read(), time.monotonic()
        start.set()
        published, achieved = await produce(
            stack.kafka_brokers,
            users,
            rate,
            seconds,
            warmup_seconds=WARMUP_SECONDS,
            topic=target.topic,
        )
        stop.set()
        elapsed = time.monotonic() - clock
        latencies: list[float] = []
        received = 0
        for _ in processes:
            result = await asyncio.to_thread(results.get, True, 120)
            latencies.extend(result["latencies"])
            received += result["received"]
        # After the clients drained: what the last events cost counts too.
        cpu_used = CpuMeter.used(cpu_before, meter.read())
        for process in processes:
            process.join(30)
        warmup = int(rate * WARMUP_SECONDS)
        run = Run(
            path=target.name,
            clients=clients,
            rate=rate,
            seconds=seconds,
            published=published,
            achieved_rate=round(achieved, 1),
            received=received,
            p50_ms=round(statistics.median(latencies) * 1000, 1) if latencies else -1,
            p99_ms=round(percentile(latencies, 0.99) * 1000, 1) if latencies else -1,
            max_ms=round(max(latencies) * 1000, 1) if latencies else -1,
            cpu_cores={name: round(used / elapsed, 2) for name, used in cpu_used.items()},
            cpu_us_per_event=cpu_us_per_event(cpu_used, published + warmup),
        )
        print(json.dumps(run.__dict__), flush=True)
        runs.append(run)
        await all_closed(target.port)
    return runs


async def most_connections(target: Target, limit: int) -> dict[str, Any]:
    """Open connections from client processes until the service refuses or `limit`."""
    url = f"ws://127.0.0.1:{target.port}/ws"
    context = multiprocessing.get_context("spawn")
    per_process = 1000
    processes = []
    start, stop = context.Event(), context.Event()
    results = context.Queue()
    readies = []
    started = time.monotonic()
    for first in range(0, limit, per_process):
        users = [f"hold-{uuid.uuid4().hex[:6]}-{i}" for i in range(min(per_process, limit - first))]
        ready = context.Event()
        process = context.Process(
            target=client_process, args=(url, users, ready, start, stop, results)
        )
        process.start()
        processes.append(process)
        readies.append(ready)
    held = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        held = max(held, await connection_count(target.port))
        if all(r.is_set() for r in readies) or any(p.exitcode not in (None, 0) for p in processes):
            break
        await asyncio.sleep(0.5)
    held = max(held, await connection_count(target.port))
    elapsed = time.monotonic() - started
    rss = rss_kib(target.service_pid) if target.service_pid else 0
    stop.set()
    for process in processes:
        process.join(60)
        if process.is_alive():
            process.kill()
    return {
        "attempted": limit,
        "held": held,
        "all_opened": all(r.is_set() for r in readies),
        "seconds_to_open": round(elapsed, 1),
        "service_rss_mib": round(rss / 1024, 1) if rss else None,
        "fd_limit": _fd_limit(),
    }


def _fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict[str, Any]:
    daprd = subprocess.run(
        [str(Path.home() / ".dapr" / "bin" / "daprd"), "--version"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "daprd": daprd,
        "packages": {p: version(p) for p in ("uvicorn", "websockets", "fastapi", "aiokafka")},
    }


def bulk_settings() -> dict[str, Any]:
    import yaml

    path = ROOT / "dapr-components" / "subscriptions" / "websocket-service.yaml"
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    bulk: dict[str, Any] = document["spec"].get("bulkSubscribe", {})
    return bulk


def cells(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (clients, rate) cell: its Dapr and direct runs, which took turns, compared."""
    out = []
    for clients, rate in sorted({(r["clients"], r["rate"]) for r in runs}):
        of = [r for r in runs if (r["clients"], r["rate"]) == (clients, rate)]
        dapr = [r for r in of if r["path"] == "dapr"]
        direct = [r for r in of if r["path"] == "direct"]
        cell: dict[str, Any] = {"clients": clients, "rate": rate}
        cell.update(compare_turns(dapr, direct, ("p50_ms", "p99_ms")))
        cell["cpu_us_per_event"] = {  # the median run by total
            path: sorted(side, key=lambda r: r["cpu_us_per_event"]["all"])[len(side) // 2][
                "cpu_us_per_event"
            ]
            for path, side in (("dapr", dapr), ("direct", direct))
        }
        out.append(cell)
    return out


def markdown(record: dict[str, Any]) -> str:
    lines = [
        "# websocket-service: publish-to-client latency",
        "",
        f"Recorded {record['recorded_at']} by `bench/websocket_latency.py`; "
        f"{record['machine']['cpus']} CPUs ({record['machine']['cpu_model']}), "
        f"Python {record['machine']['python']}, {record['machine']['daprd']}; "
        f"load average at start {record['machine']['load_average_at_start'][0]:.1f} "
        "(what else ran on the machine is in the notes below).",
        "",
        "Latency: producer send (aiokafka) → Kafka → daprd → service → WebSocket → client "
        "process. One user per client; events round-robin over the users; the first second of "
        "each run is a warm-up, not measured. Delivery: bulk "
        f"subscription {json.dumps(record['settings']['subscription'])}; frame coalescing "
        f"{record['settings']['coalesce_ms']} ms; compression off. The baseline (direct): "
        "the same app fed by aiokafka in its own process (`bench/websocket_direct.py`), no "
        "Dapr, on a topic of its own; the two take turns, run by run.",
        "",
        f"Each cell was run {record['settings']['repeat']} time(s) on each path; every run is "
        "a row. CPU: cores used while the run's events were produced and drained.",
        "",
        "| path | clients | events/s (asked / achieved) | seconds | published | received | "
        "p50 ms | p99 ms | max ms | CPU cores service / daprd / kafka |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in sorted(record["runs"], key=lambda r: (r["clients"], r["rate"], r["path"])):
        cpu = run["cpu_cores"]
        lines.append(
            f"| {run['path']} | {run['clients']} | {run['rate']} / {run['achieved_rate']} "
            f"| {run['seconds']:g} | {run['published']} | {run['received']} | {run['p50_ms']} "
            f"| {run['p99_ms']} | {run['max_ms']} "
            f"| {cpu['service']} / {cpu['daprd']} / {cpu['kafka']} |"
        )
    lines += [
        "",
        "Dapr / direct, median runs of each cell (and turn by turn):",
        "",
        "| clients | events/s | p50 ms Dapr / direct | p50 ratio | p99 ms Dapr / direct "
        "| p99 ratio | CPU µs per event, all, Dapr / direct | CPU ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in record["cells"]:
        p50, p99, cpu = cell["p50_ms"], cell["p99_ms"], cell["cpu_us_per_event"]
        cpu_ratio = ratio(cpu["dapr"]["all"], cpu["direct"]["all"])
        lines.append(
            f"| {cell['clients']} | {cell['rate']} | {p50['dapr']} / {p50['direct']} "
            f"| {p50['ratio']} ({', '.join(map(str, p50['ratio_per_turn']))}) "
            f"| {p99['dapr']} / {p99['direct']} "
            f"| {p99['ratio']} ({', '.join(map(str, p99['ratio_per_turn']))}) "
            f"| {cpu['dapr']['all']} / {cpu['direct']['all']} | {cpu_ratio} |"
        )
    for cell in record["cells"]:
        lines += [
            "",
            f"CPU µs per event by process, {cell['clients']} clients at {cell['rate']}/s "
            "(median run; producer: this benchmark's process):",
            "",
            *cpu_table(
                {
                    "Dapr": cell["cpu_us_per_event"]["dapr"],
                    "direct": cell["cpu_us_per_event"]["direct"],
                },
                CPU_COLUMNS,
            ),
        ]
    held = record.get("most_connections")
    if held:
        lines += [
            "",
            f"Most connections one service process held: **{held['held']}** of "
            f"{held['attempted']} attempted (all opened: {held['all_opened']}, in "
            f"{held['seconds_to_open']} s; service RSS {held['service_rss_mib']} MiB; "
            f"fd limit {held['fd_limit']}).",
        ]
    lines += ["", *record.get("notes", [])] if record.get("notes") else []
    return "\n".join(lines) + "\n"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short cell (100 clients)")
    parser.add_argument("--rate", type=int, default=1000, help="events/s of the quick run")
    parser.add_argument("--clients", type=int, default=100, help="clients of the quick run")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="turns of each cell")
    parser.add_argument(
        "--hold",
        type=int,
        # The open-file limit bounds what a process can hold; leave room for the rest.
        default=min(MOST_CONNECTIONS_TRIED, _fd_limit() - FD_HEADROOM),
        help="connections to try holding",
    )
    parser.add_argument("--coalesce-ms", type=float, default=0.0)
    parser.add_argument("--note", action="append", default=[], help="a line for the record")
    parser.add_argument(
        "--no-record", action="store_true", help="print only; leave bench/results/ alone"
    )
    args = parser.parse_args()
    stack = ensure_stack()
    await ensure_topic(stack.kafka_brokers)
    env = {"WEBSOCKET_COALESCE_MILLISECONDS": str(args.coalesce_ms)}
    service = start_service(stack, env)
    log_dir = Path(tempfile.mkdtemp(prefix="websocket-bench-"))
    direct_process, direct = start_direct(stack, env, log_dir)
    try:
        dapr = dapr_target(service)
        await wait_until_delivering(stack, dapr)
        await wait_until_delivering(stack, direct)
        matrix = (
            [(args.clients, [args.rate])]
            if args.quick
            else [(100, [100, 500, 1000]), (1000, [100, 500, 1000])]
        )
        repeat = 1 if args.quick and args.repeat == 3 else args.repeat
        record: dict[str, Any] = {
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": {
                "coalesce_ms": args.coalesce_ms,
                "compression": False,
                "subscription": bulk_settings(),
                "repeat": repeat,
            },
            "notes": args.note,
            "runs": [],
        }
        seconds = 4.0 if args.quick else args.seconds
        for clients, rates in matrix:
            for turn in range(repeat):
                for rate in rates:
                    print(f"turn {turn + 1}/{repeat}: {clients} clients at {rate}/s", flush=True)
                    for target in (dapr, direct):  # taking turns: the same load for both
                        runs = await measure(stack, target, clients, [rate], seconds)
                        record["runs"].extend(r.__dict__ for r in runs)
        record["cells"] = cells(record["runs"])
        if not args.quick:
            record["most_connections"] = await most_connections(dapr, args.hold)
            print(json.dumps(record["most_connections"]), flush=True)
        record_results("websocket_latency", record, markdown(record), no_record=args.no_record)
    finally:
        direct_process.terminate()
        direct_process.wait(30)
        service.app.stop()


if __name__ == "__main__":
    asyncio.run(main())
