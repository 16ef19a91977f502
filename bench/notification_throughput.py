"""notification-service benchmark: notifications per second end to end — a task event on
Kafka, through daprd, the service (preferences, ledger, claim, SMTP) into an SMTP server —
for 1,000 users with stored preferences, and the memory (RSS) of the service and its
sidecar under that load.

    uv run python bench/notification_throughput.py [--users 1000] [--events 3000] [--repeat 3]

The baseline, taking turns with the service in the same run: a direct consumer (aiokafka, in
this process, on a topic of its own) that reads each user's preferences from the same state
rows in Postgres (asyncpg, no daprd), composes the same mail with the service's
EmailComposer and sends it with its SmtpMailer (same pool size) to the same sink. It does
what any consumer must (look up, compose, send), not what the service adds (rate-limit
ledger, claim and sent record, dead letters): the ratio prices Dapr and those together.

Needs the local stack (`bash scripts/stack.sh up`). It runs its own SMTP sink, its own
notification-service beside its own daprd (own app id, state keys and ledger namespace) and
a topic of its own, so nothing else sees its events. Prints the figures and records them in
bench/results/notification_throughput.{json,md} (not with --no-record)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
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
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from notification_service.adapters.smtp import SmtpMailer
from notification_service.emails import EmailComposer
from notification_service.preferences import Preferences
from notification_service.settings import Settings as NotifySettings
from taskevents.cloudevents import parse_cloud_event
from taskevents.kafka import KafkaSettings
from taskevents_cli.devrun import AppSpec, RunningApp, start_app

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Batches,
    compare_turns,
    consume_until,
    cpu_table,
    cpu_us_per_event,
    daprd_path,
    free_port,
    machine,
    record_results,
    say,
)
from bench.procfs import CpuMeter, kafka_pids, one_process, postgres_pids, rss_kib  # noqa: E402
from bench.tokens import operator_headers  # noqa: E402

COMPONENTS = ROOT / "dapr-components"
VENV_BIN = Path(sys.executable).parent
# KAFKA_BROKERS and the other client settings (TLS, SASL) of taskevents.kafka.
KAFKA = KafkaSettings()
BROKERS = KAFKA.brokers
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents"
)
PARTITIONS = 6
RSS_SAMPLE_SECONDS = 0.25


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


def task_event(run: str, user: int, n: int, tag: str = "") -> dict[str, Any]:
    return {
        "event_id": f"{run}-{tag}{n}",
        "type": "task.created",
        "task_id": f"{run}-task-{tag}{n}",
        "user_id": f"{run}-user-{user}",
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"title": f"Benchmark task {n}", "due_at": "2026-12-01T09:00:00Z"},
    }


def address(run: str, user: int) -> str:
    return f"{run}-user-{user}@bench.example.com"


def mail_times(directory: Path) -> list[datetime]:
    """When the sink received each mail, in order."""
    return sorted(
        datetime.fromisoformat(json.loads(p.read_text())["received_at"])
        for p in directory.glob("*.json")
    )


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


def preferences_of(value: bytes) -> Preferences:
    """A preferences row as daprd stored it: the JSON, or the JSON as a JSON string."""
    decoded = json.loads(value)
    return Preferences.model_validate_json(decoded if isinstance(decoded, str) else value)


async def direct_consumer(
    topic: str, app_id: str, smtp_port: int, stop: asyncio.Event, ready: asyncio.Event
) -> None:
    """The baseline: aiokafka → the user's preferences (the same rows, asyncpg) → the same
    mail (EmailComposer) → the same sink (SmtpMailer); partitions concurrently, one event at
    a time within each, as daprd delivers; offsets committed after the mails."""
    defaults = NotifySettings.model_fields
    mail_from = str(defaults["mail_from"].default)
    composer = EmailComposer(
        link_base_url=str(defaults["link_base_url"].default), mail_from=mail_from
    )
    mailer = SmtpMailer(
        host="127.0.0.1",
        port=smtp_port,
        mail_from=mail_from,
        pool_size=int(defaults["smtp_pool_size"].default),
    )
    pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=PARTITIONS)
    consumer = AIOKafkaConsumer(
        topic,
        **KAFKA.client_options(),
        group_id=f"{app_id}-direct",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )

    async def one(value: bytes) -> None:
        event = parse_cloud_event(value).task_event()
        row = await pool.fetchval(
            "SELECT value FROM dapr_state WHERE key = $1", f"{app_id}||preferences:{event.user_id}"
        )
        if row is None:
            raise LookupError(f"no preferences for {event.user_id}")
        preferences = preferences_of(row)
        assert preferences.email is not None
        zone = ZoneInfo(preferences.time_zone)
        await mailer.send(composer.compose(event, preferences.email, zone))

    async def in_order(values: list[bytes]) -> None:
        for value in values:
            await one(value)

    async def handle(batches: Batches) -> None:
        await asyncio.gather(
            *(in_order([r.value or b"" for r in records]) for records in batches.values())
        )

    try:
        await consume_until(consumer, stop, ready, handle)
    finally:
        await mailer.close()
        await pool.close()


async def measure(
    producer: AIOKafkaProducer,
    topic: str,
    run: str,
    tag: str,
    args: argparse.Namespace,
    mail_dir: Path,
    meter: CpuMeter,
    check: Callable[[], None],
    rss_pids: dict[str, int],
) -> dict[str, Any]:
    """Publish `args.events` task.created events and wait until as many mails arrived."""
    baseline = mail_count(mail_dir)
    samples: dict[str, list[int]] = {name: [] for name in rss_pids}
    cpu_before = meter.read()
    started = time.monotonic()
    for n in range(args.events):
        data = task_event(run, n % args.users, n, tag)
        await producer.send(topic, cloud_event(data, topic), key=data["task_id"].encode())
    await producer.flush()
    published = time.monotonic()
    last_report = 0.0
    deadline = time.monotonic() + max(600.0, args.events / 2)
    while (received := mail_count(mail_dir) - baseline) < args.events:
        for name, pid in rss_pids.items():
            samples[name].append(rss_kib(pid))
        check()
        if time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            say(f"    {received}/{args.events} mails after {last_report - started:.0f}s")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {received} of {args.events} mails arrived")
        await asyncio.sleep(RSS_SAMPLE_SECONDS)
    finished = time.monotonic()
    cpu_used = CpuMeter.used(cpu_before, meter.read())
    times = mail_times(mail_dir)[baseline:]
    tenth, ninetieth = times[len(times) // 10], times[len(times) * 9 // 10]
    steady = (len(times) * 8 // 10) / max((ninetieth - tenth).total_seconds(), 1e-9)
    total_seconds = finished - started
    return {
        "mails": len(times),
        "seconds_first_publish_to_last_mail": round(total_seconds, 2),
        "notifications_per_second": round(args.events / total_seconds, 1),
        "notifications_per_second_steady_10_to_90_percent": round(steady, 1),
        "publish_seconds": round(published - started, 2),
        "cpu_us_per_notification": cpu_us_per_event(cpu_used, args.events),
        "rss_mib": {
            name: {
                "peak": round(max(values or [0]) / 1024, 1),
                "median": round(statistics.median(values or [0]) / 1024, 1),
            }
            for name, values in samples.items()
        },
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    middle = sorted(runs, key=lambda r: r["notifications_per_second"])[len(runs) // 2]
    return {**middle, "runs_per_second": [r["notifications_per_second"] for r in runs]}


async def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--events", type=int, default=3000, help="events a turn, each path")
    parser.add_argument("--repeat", type=int, default=3, help="turns of Dapr vs direct")
    parser.add_argument("--note", default="", help="recorded with the results")
    parser.add_argument(
        "--no-record", action="store_true", help="print only; leave bench/results/ alone"
    )
    args = parser.parse_args()

    run = f"nb{uuid.uuid4().hex[:6]}"
    app_id, topic = f"notify-bench-{run}", f"notify-bench-{run}"
    direct_topic = f"{topic}-direct"
    work = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    mail_dir = work / "mail"
    daprd = daprd_path()
    record: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(daprd),
        "users": args.users,
        "events": args.events,
        "repeat": args.repeat,
        "note": args.note,
    }

    say(f"==> topics {topic}(-direct), SMTP sink and {app_id} beside its daprd (work dir {work})")
    admin = AIOKafkaAdminClient(**KAFKA.client_options())
    await admin.start()
    await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (topic, direct_topic)])
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
            # Every turn mails each user again: the rate limit is for people, not for this.
            "NOTIFY_RATE_LIMIT_COUNT": "1000000",
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
    stop, ready = asyncio.Event(), asyncio.Event()
    direct_task: asyncio.Task[None] | None = None
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

        say("==> the direct consumer (the baseline)")
        direct_task = asyncio.create_task(
            direct_consumer(direct_topic, app_id, smtp_port, stop, ready)
        )
        await asyncio.wait_for(ready.wait(), 60)
        before = mail_count(mail_dir)
        data = task_event(run, 0, 0, "warmup-")
        await producer.send_and_wait(direct_topic, cloud_event(data, direct_topic), key=b"w")

        async def direct_warm() -> bool:
            if direct_task is not None and direct_task.done():
                direct_task.result()
            return mail_count(mail_dir) > before

        await wait_for(direct_warm, "the direct consumer's warm-up mail", 60)

        assert app.app is not None
        assert app.app.pid is not None
        assert app.sidecar.pid is not None
        common = {
            "postgres": postgres_pids,
            "kafka": kafka_pids,
            "smtp sink": one_process(sink.pid),
            "benchmark process": lambda: [os.getpid()],
        }
        dapr_meter = CpuMeter(
            {"service": one_process(app.app.pid), "daprd": one_process(app.sidecar.pid), **common}
        )
        direct_meter = CpuMeter(common)
        rss_pids = {"service": app.app.pid, "daprd": app.sidecar.pid}

        def direct_alive() -> None:
            if direct_task is not None and direct_task.done():
                direct_task.result()

        dapr_runs, direct_runs = [], []
        for turn in range(args.repeat):
            say(f"==> turn {turn + 1}/{args.repeat}: {args.events} events, service then direct")
            dapr_runs.append(
                await measure(
                    producer, topic, run, f"d{turn}-", args, mail_dir, dapr_meter,
                    app.check_alive, rss_pids,
                )
            )  # fmt: skip
            direct_runs.append(
                await measure(
                    producer, direct_topic, run, f"b{turn}-", args, mail_dir, direct_meter,
                    direct_alive, {},
                )
            )  # fmt: skip
        record["results"] = {
            "dapr": median_run(dapr_runs),
            "direct": median_run(direct_runs),
            "vs_direct": compare_turns(dapr_runs, direct_runs, ("notifications_per_second",))[
                "notifications_per_second"
            ],
        }
        record["machine"]["load_average_at_end"] = os.getloadavg()
    finally:
        stop.set()
        if direct_task is not None:
            await asyncio.gather(direct_task, return_exceptions=True)
        await producer.stop()
        app.stop()
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=10)
        await admin.delete_topics([topic, direct_topic])
        await admin.close()
        connection = await asyncpg.connect(DATABASE_URL)
        try:
            await connection.execute("DELETE FROM notification_ledger WHERE namespace = $1", app_id)
        finally:
            await connection.close()

    results = record["results"]
    say(
        f"==> {results['dapr']['notifications_per_second']} notifications/s through Dapr, "
        f"{results['direct']['notifications_per_second']} direct "
        f"(ratio {results['vs_direct']['ratio']})"
    )
    record_results("notification_throughput", record, markdown(record), no_record=args.no_record)
    return 0


CPU_COLUMNS = ("service", "daprd", "postgres", "kafka", "smtp sink", "benchmark process")


def markdown(record: dict[str, Any]) -> str:
    r, m, v = record["results"], record["machine"], record["versions"]
    dapr, direct, versus = r["dapr"], r["direct"], r["vs_direct"]
    rss = dapr["rss_mib"]
    lines = [
        "# notification-service throughput",
        "",
        f"{record['date']} · {record['users']} users with stored preferences · "
        f"{record['events']} `task.created` events a turn on a 6-partition topic → daprd → "
        "notification-service (preferences, rate-limit ledger, claim, SMTP) → SMTP sink; "
        "beside it, taking turns, the direct baseline: aiokafka → the same preference rows "
        "(asyncpg) → the same mail → the same sink, no Dapr, no ledger or claim.",
        "",
        "| notifications/s (median turn) | Dapr path | direct | ratio |",
        "|---|---:|---:|---:|",
        f"| first publish → last mail | {dapr['notifications_per_second']} "
        f"| {direct['notifications_per_second']} | {versus['ratio']} |",
        f"| steady (10 % to 90 % of mails) "
        f"| {dapr['notifications_per_second_steady_10_to_90_percent']} "
        f"| {direct['notifications_per_second_steady_10_to_90_percent']} | |",
        f"| every turn | {', '.join(map(str, dapr['runs_per_second']))} "
        f"| {', '.join(map(str, direct['runs_per_second']))} "
        f"| {', '.join(map(str, versus['ratio_per_turn']))} |",
        "",
        f"Service RSS median / peak {rss['service']['median']} / {rss['service']['peak']} MiB; "
        f"daprd {rss['daprd']['median']} / {rss['daprd']['peak']} MiB.",
        "",
        "CPU µs per notification, median turn (benchmark process: the producer and the mail "
        "counting; for the baseline, its consumer too):",
        "",
        *cpu_table(
            {
                "Dapr path": dapr["cpu_us_per_notification"],
                "direct": direct["cpu_us_per_notification"],
            },
            CPU_COLUMNS,
        ),
        "",
        f"Machine: {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['system']}; "
        f"load average at start {tuple(round(x, 1) for x in m['load_average_at_start'])}, "
        f"at end {tuple(round(x, 1) for x in m.get('load_average_at_end', ()))}.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
    ]
    if record.get("note"):
        lines += ["", f"Note: {record['note']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
