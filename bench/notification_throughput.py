"""notification-service benchmark: notifications per second end to end — a task event on
Kafka, through daprd, the service (preferences, ledger, claim, SMTP) into an SMTP server —
for 1,000 users with stored preferences, and the memory (RSS) of the service and its
sidecar under that load.

    uv run python bench/notification_throughput.py [--users 1000] [--events 3000]

Needs the local stack (`bash scripts/stack.sh up`). It runs its own SMTP sink, its own
notification-service beside its own daprd (own app id, state keys and ledger namespace) and
a topic of its own, so nothing else sees its events. Prints the figures and records them in
bench/results/notification_throughput.{json,md}."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from taskevents.kafka import KafkaSettings
from taskevents_cli.devrun import AppSpec, RunningApp, start_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procfs import cpu_seconds, rss_kib  # noqa: E402
from bench.tokens import operator_headers  # noqa: E402

COMPONENTS = ROOT / "dapr-components"
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
# KAFKA_BROKERS and the other client settings (TLS, SASL) of taskevents.kafka.
KAFKA = KafkaSettings()
BROKERS = KAFKA.brokers
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents"
)
PARTITIONS = 6
RSS_SAMPLE_SECONDS = 0.25


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daprd_path() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "dapr-runtime.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / "daprd")


def render_resources(target: Path, app_id: str, topic: str) -> None:
    """The production components (state store, secret store, pub/sub, resiliency) for our
    app id, a consumer group of our own, and a subscription to our topic."""
    target.mkdir(parents=True, exist_ok=True)
    for source in COMPONENTS.glob("*.yaml"):
        if source.name == "configuration.yaml":
            continue
        documents = [d for d in yaml.safe_load_all(source.read_text()) if d]
        kept = []
        for document in documents:
            if document.get("kind") == "Resiliency" and "notification-service" not in (
                document.get("scopes") or ["notification-service"]
            ):
                continue
            if document.get("kind") == "Component" and document["metadata"]["name"] == (
                "kafka-pubsub"
            ):
                document["spec"]["metadata"] = [
                    m
                    for m in document["spec"]["metadata"]
                    if m["name"] not in ("consumerID", "initialOffset")
                ] + [
                    {"name": "consumerID", "value": app_id},
                    {"name": "initialOffset", "value": "newest"},
                ]
            if "scopes" in document:
                document["scopes"] = [app_id]
            kept.append(document)
        (target / source.name).write_text(yaml.safe_dump_all(kept, sort_keys=False))
    subscription = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": app_id},
        "spec": {
            "pubsubname": "kafka-pubsub",
            "topic": topic,
            "routes": {"default": "/events/task-events"},
            "deadLetterTopic": "task-events-dlq",
        },
        "scopes": [app_id],
    }
    (target / "subscription.yaml").write_text(yaml.safe_dump(subscription, sort_keys=False))


def cloud_event(data: dict[str, Any], topic: str) -> bytes:
    return json.dumps(
        {
            "specversion": "1.0",
            "id": data["event_id"],
            "source": "notification-bench",
            "type": "com.dapr.event.sent",
            "datacontenttype": "application/json",
            "topic": topic,
            "pubsubname": "kafka-pubsub",
            "time": datetime.now(UTC).isoformat(),
            "data": data,
        }
    ).encode()


def task_event(run: str, user: int, n: int) -> dict[str, Any]:
    return {
        "event_id": f"{run}-{n}",
        "type": "task.created",
        "task_id": f"{run}-task-{n}",
        "user_id": f"{run}-user-{user}",
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"title": f"Benchmark task {n}", "due_at": "2026-12-01T09:00:00Z"},
    }


def address(run: str, user: int) -> str:
    return f"{run}-user-{user}@bench.example.com"


def mail_count(directory: Path) -> int:
    return sum(1 for _ in directory.glob("*.json"))


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s")
        await asyncio.sleep(0.5)


def start_sink(port: int, directory: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SMTP_PORT": str(port),
        "MAILSINK_HTTP_PORT": "0",
        "MAILSINK_DIR": str(directory),
        "MAILSINK_REJECT": "",
        "MAILSINK_LOG_LEVEL": "WARNING",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "mailsink.py")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def versions(daprd: str) -> dict[str, str]:
    import aiokafka
    import aiosmtplib

    out = subprocess.run([daprd, "--version"], capture_output=True, text=True, check=False)
    return {
        "python": platform.python_version(),
        "daprd": out.stdout.strip(),
        "kafka": "4.3.1 (scripts/kafka.sh)",
        "asyncpg": asyncpg.__version__,
        "aiokafka": aiokafka.__version__,
        "aiosmtplib": aiosmtplib.__version__,
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(int(memory) / 1024 / 1024, 1),
        "system": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--note", default="", help="recorded with the results")
    args = parser.parse_args()

    run = f"nb{uuid.uuid4().hex[:6]}"
    app_id, topic = f"notify-bench-{run}", f"notify-bench-{run}"
    work = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    mail_dir = work / "mail"
    daprd = daprd_path()
    record: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(daprd),
        "users": args.users,
        "events": args.events,
        "note": args.note,
    }

    say(f"==> topic {topic}, SMTP sink and {app_id} beside its daprd (work dir {work})")
    admin = AIOKafkaAdminClient(**KAFKA.client_options())
    await admin.start()
    await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    smtp_port = free_port()
    sink = start_sink(smtp_port, mail_dir, work / "mailsink.log")
    render_resources(work / "resources", app_id, topic)
    spec = AppSpec(
        app_id=app_id,
        app_dir=ROOT,
        command=[str(VENV_BIN / "notification-service")],
        app_port=free_port(),
        dapr_http_port=free_port(),
        dapr_grpc_port=free_port(),
        metrics_port=free_port(),
        resources_paths=[work / "resources"],
        config_path=COMPONENTS / "configuration.yaml",
        env={
            "TASKEVENTS_ENV": "development",
            "LOG_LEVEL": "WARNING",
            "DATABASE_URL": DATABASE_URL,
            "NOTIFY_SMTP_PORT": str(smtp_port),
            "NOTIFY_LEDGER_NAMESPACE": app_id,
            "NOTIFY_SENT_RETENTION_DAYS": "1",
        },
        log_level="warn",
    )
    app: RunningApp = start_app(
        spec,
        daprd=daprd,
        log_dir=work / "logs",
        daprd_env={
            "TASKEVENTS_KAFKA_BROKERS": BROKERS,
            "TASKEVENTS_DATABASE_URL": DATABASE_URL,
        },
    )
    producer = AIOKafkaProducer(**KAFKA.client_options(), linger_ms=5)
    await producer.start()
    try:
        app.wait_ready()
        base = f"http://127.0.0.1:{spec.app_port}"

        say(f"==> preferences for {args.users} users")
        async with httpx.AsyncClient(timeout=30, headers=operator_headers()) as http:
            limit = asyncio.Semaphore(16)

            async def put(user: int) -> None:
                async with limit:
                    response = await http.put(
                        f"{base}/preferences/{run}-user-{user}",
                        json={"email": address(run, user), "time_zone": "Europe/Berlin"},
                    )
                    response.raise_for_status()

            await asyncio.gather(*(put(u) for u in range(args.users)))

        say("==> waiting until the subscription consumes (probe mails)")
        probes = 0

        async def probed() -> bool:
            # A user of its own per probe: probes never meet the rate limit.
            nonlocal probes
            if mail_count(mail_dir) > 0:
                return True
            data = task_event(run, 0, -1 - probes)
            data["user_id"] = f"{run}-probe-{probes}"
            data["payload"]["user_email"] = f"{run}-probe-{probes}@bench.example.com"
            probes += 1
            await producer.send_and_wait(topic, cloud_event(data, topic), key=b"probe")
            await asyncio.sleep(2.0)
            return mail_count(mail_dir) > 0

        async def every_probe_mailed() -> bool:
            return mail_count(mail_dir) >= probes

        await wait_for(probed, "a probe mail")
        await wait_for(every_probe_mailed, "every probe mailed", 60)
        baseline = mail_count(mail_dir)
        assert app.app is not None
        assert app.app.pid is not None
        assert app.sidecar.pid is not None
        pids = {"service": app.app.pid, "daprd": app.sidecar.pid}
        pids["smtp sink"] = sink.pid
        idle_rss = {name: rss_kib(pid) for name, pid in pids.items()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}

        say(f"==> {args.events} task.created events for {args.users} users")
        samples: dict[str, list[int]] = {name: [] for name in pids}
        started = time.monotonic()
        for n in range(args.events):
            data = task_event(run, n % args.users, n)
            await producer.send(topic, cloud_event(data, topic), key=data["task_id"].encode())
        await producer.flush()
        published = time.monotonic()
        say(f"    published in {published - started:.1f}s")

        last_report = 0.0
        deadline = time.monotonic() + max(600.0, args.events / 2)
        while (received := mail_count(mail_dir) - baseline) < args.events:
            for name, pid in pids.items():
                samples[name].append(rss_kib(pid))
            app.check_alive()
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                elapsed = last_report - started
                say(f"    {received}/{args.events} mails after {elapsed:.0f}s")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {received} of {args.events} mails arrived")
            await asyncio.sleep(RSS_SAMPLE_SECONDS)
        finished = time.monotonic()
        cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}

        times = sorted(
            datetime.fromisoformat(json.loads(p.read_text())["received_at"])
            for p in mail_dir.glob("*.json")
        )[baseline:]
        tenth, ninetieth = times[len(times) // 10], times[len(times) * 9 // 10]
        steady = (len(times) * 8 // 10) / max((ninetieth - tenth).total_seconds(), 1e-9)
        total_seconds = finished - started
        record["results"] = {
            "mails": len(times),
            "seconds_first_publish_to_last_mail": round(total_seconds, 2),
            "notifications_per_second": round(args.events / total_seconds, 1),
            "notifications_per_second_steady_10_to_90_percent": round(steady, 1),
            "publish_seconds": round(published - started, 2),
            "cpu_ms_per_notification": {
                name: round(seconds * 1000 / args.events, 2) for name, seconds in cpu_used.items()
            },
            "rss_mib": {
                name: {
                    "idle": round(idle_rss[name] / 1024, 1),
                    "peak": round(max(values or [0]) / 1024, 1),
                    "median": round(statistics.median(values or [0]) / 1024, 1),
                }
                for name, values in samples.items()
            },
        }
        record["machine"]["load_average_at_end"] = os.getloadavg()
    finally:
        await producer.stop()
        app.stop()
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)
        await admin.delete_topics([topic])
        await admin.close()
        connection = await asyncpg.connect(DATABASE_URL)
        try:
            await connection.execute("DELETE FROM notification_ledger WHERE namespace = $1", app_id)
        finally:
            await connection.close()

    results = record["results"]
    say(
        f"==> {results['notifications_per_second']} notifications/s end to end "
        f"({results['notifications_per_second_steady_10_to_90_percent']}/s steady), "
        f"service RSS peak {results['rss_mib']['service']['peak']} MiB"
    )
    write(record)
    print(json.dumps(results))
    return 0


def write(record: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "notification_throughput.json").write_text(json.dumps(record, indent=2) + "\n")
    r, m, v = record["results"], record["machine"], record["versions"]
    rss = r["rss_mib"]
    lines = [
        "# notification-service throughput",
        "",
        f"{record['date']} · {record['users']} users with stored preferences · "
        f"{record['events']} `task.created` events on a 6-partition topic → daprd → "
        "notification-service (preferences, rate-limit ledger, claim, SMTP) → SMTP sink.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| notifications/s, first publish → last mail | {r['notifications_per_second']} |",
        f"| notifications/s, steady (10 % to 90 % of mails) | "
        f"{r['notifications_per_second_steady_10_to_90_percent']} |",
        f"| first publish → last mail | {r['seconds_first_publish_to_last_mail']} s |",
        f"| service RSS idle / median / peak | {rss['service']['idle']} / "
        f"{rss['service']['median']} / {rss['service']['peak']} MiB |",
        f"| daprd RSS idle / median / peak | {rss['daprd']['idle']} / "
        f"{rss['daprd']['median']} / {rss['daprd']['peak']} MiB |",
        "| CPU per notification: service / daprd / SMTP sink | "
        + " / ".join(f"{ms} ms" for ms in r["cpu_ms_per_notification"].values())
        + " |",
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['system']}; "
        f"load average at start {tuple(round(x, 1) for x in m['load_average_at_start'])}, "
        f"at end {tuple(round(x, 1) for x in m.get('load_average_at_end', ()))}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
    ]
    if record.get("note"):
        lines += ["", f"Note: {record['note']}"]
    (RESULTS / "notification_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
