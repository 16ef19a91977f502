"""notification-service across an SMTP outage longer than Dapr's retries, and a new consumer
group that finds history on its topic. Each runs as an app of its own (own app id, consumer
group, ledger namespace) beside its own daprd, mailing to an SMTP sink of its own that the
tests stop and start — never the shared one. The retry budget is cut to seconds here (5 min
by default) so that the test stays short."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from taskevents.events import EventType, TaskEvent
from taskevents.kafka import kafka_client_options
from taskevents.publisher import EventPublisher
from taskevents.status import DEAD_LETTER_SOURCE_HEADER as SOURCE_HEADER
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.cluster import (
    NOTIFY_HISTORY_TOPIC,
    VENV_BIN,
    Service,
    service_spec,
    start_service,
)
from tests.support.kafka import cloud_event
from tests.support.mailbox import Sink
from tests.support.notifiers import (
    forget_ledger,
    history,
    own_sink,
    subscription,
    wait_until_mailing,
)
from tests.support.stack import RUN_ID, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

APP_ID = f"notify-outage-{RUN_ID}"
HISTORY_APP_ID = f"notify-history-{RUN_ID}"
RETRY_BUDGET_SECONDS = 25
# resiliency.yaml's retries of a RETRY answer: about 7 s of back-off (at most ~10 s with the
# jitter), then the dead letter.
OLD_BUDGET_SECONDS = 10
MAX_EVENT_AGE_SECONDS = 600
OPERATOR = bearer("operator", operator=True)


@pytest_asyncio.fixture(scope="module")
async def sink(stack: Stack) -> AsyncIterator[Sink]:
    async with own_sink(stack, "notify-outage-sink") as sink:
        yield sink


def notifier_env(sink: Sink, app_id: str, **extra: str) -> dict[str, str]:
    return {
        "NOTIFY_SMTP_PORT": str(sink.port),
        "NOTIFY_LEDGER_NAMESPACE": app_id,
        "NOTIFY_DEFERRED_POLL_SECONDS": "0.5",
        "NOTIFY_SMTP_TIMEOUT_SECONDS": "5",
        **extra,
    }


@dataclass
class Notifier:
    service: Service
    publisher: EventPublisher

    async def history(self, user_id: str) -> list[dict[str, Any]]:
        return await history(self.service.url, user_id)


@pytest_asyncio.fixture(scope="module")
async def notifier(stack: Stack, cluster: Cluster, sink: Sink) -> AsyncIterator[Notifier]:
    """Consumes task-events itself, so that a dead letter the audit log replays (to
    task-events) comes back to it."""
    spec, consumer = service_spec(
        stack,
        APP_ID,
        command=[str(VENV_BIN / "notification-service")],
        extra_resources=[subscription(APP_ID, "task-events")],
        role="notification-service",
        env=notifier_env(
            sink,
            APP_ID,
            NOTIFY_RETRY_BUDGET_SECONDS=str(RETRY_BUDGET_SECONDS),
            NOTIFY_RETRY_FIRST_SECONDS="1",
            NOTIFY_RETRY_MAX_INTERVAL_SECONDS="2",
        ),
    )
    service = start_service(stack, spec, consumer)
    publisher = EventPublisher(
        pubsub_name="kafka-pubsub", topic="task-events",
        http_port=cluster.cli.dapr_http_port, grpc_port=cluster.cli.dapr_grpc_port,
    )  # fmt: skip
    notifier = Notifier(service, publisher)
    try:
        await wait_until_mailing(publisher.publish, sink, service, f"outage-{RUN_ID}")
        yield notifier
    finally:
        await publisher.close()
        service.app.stop()
        await forget_ledger(stack, APP_ID)


def created(user_id: str, task_id: str, address: str, **fields: Any) -> TaskEvent:
    return TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id,
        payload={"title": f"Task {task_id}", "user_email": address}, **fields,
    )  # fmt: skip


def mails_by_event(sink: Sink, address: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for mail in sink.mails_to(address):
        event_id = mail.header("X-Taskevents-Event-Id") or ""
        counts[event_id] = counts.get(event_id, 0) + 1
    return counts


async def dead_letters_of(cluster: Cluster, event_ids: set[str]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(
            f"{cluster['audit-log-service'].url}/audit/dead-letters",
            params={"limit": 200},
            headers=OPERATOR,
        )
    response.raise_for_status()
    return [d for d in response.json()["items"] if d.get("event_id") in event_ids]


async def test_an_smtp_outage_longer_than_daprs_retries_is_mailed_once_after_it(
    notifier: Notifier, sink: Sink, cluster: Cluster, unique: str
) -> None:
    user_id, address = f"user-{unique}", f"outage-{unique}@example.com"
    events = [created(user_id, f"task-{unique}-{i}", address) for i in range(3)]
    sink.stop()
    try:
        for event in events:
            await notifier.publisher.publish(event)

        async def kept_past_the_old_budget() -> bool:
            rows = await notifier.history(user_id)
            if len(rows) < len(events) or any(r["status"] != "deferred" for r in rows):
                return False
            assert all("SMTP" in r["reason"] for r in rows), rows
            first = min(datetime.fromisoformat(r["created_at"]) for r in rows)
            last_try = max(datetime.fromisoformat(r["updated_at"]) for r in rows)
            # The relay still retrying after Dapr's retries would have dead-lettered them.
            return last_try - first > timedelta(seconds=OLD_BUDGET_SECONDS)

        await eventually(
            kept_past_the_old_budget, timeout=RETRY_BUDGET_SECONDS - 2, interval=1.0,
            what="the notifications kept and retried past Dapr's old budget",
            check=notifier.service.check_alive,
        )  # fmt: skip
    finally:
        sink.start()
    await sink.wait_accepting()

    async def all_sent() -> bool:
        rows = await notifier.history(user_id)
        return len(rows) == len(events) and all(r["status"] == "sent" for r in rows)

    await eventually(
        all_sent, timeout=30, what="every kept notification sent after the outage",
        check=notifier.service.check_alive,
    )  # fmt: skip
    assert mails_by_event(sink, address) == {e.event_id: 1 for e in events}
    assert await dead_letters_of(cluster, {e.event_id for e in events}) == []


async def test_past_the_budget_a_dead_letter_with_its_reason_that_one_replay_delivers(
    notifier: Notifier, sink: Sink, cluster: Cluster, unique: str
) -> None:
    user_id, address = f"user-{unique}", f"late-{unique}@example.com"
    event = created(user_id, f"task-{unique}", address)
    sink.stop()
    try:
        await notifier.publisher.publish(event)

        async def dead_lettered() -> list[dict[str, Any]]:
            return await dead_letters_of(cluster, {event.event_id})

        [letter] = await eventually(
            dead_lettered, timeout=RETRY_BUDGET_SECONDS + 30, interval=1.0,
            what="the dead letter after the retry budget", check=cluster.check_alive,
        )  # fmt: skip
    finally:
        sink.start()
    assert letter["reason"].startswith(f"gave up after the retry budget ({RETRY_BUDGET_SECONDS} s)")
    assert "SMTP" in letter["reason"]
    assert letter["metadata"][SOURCE_HEADER] == "notification-service"
    assert letter["task_id"] == event.task_id
    [row] = await notifier.history(user_id)
    assert row["status"] == "rejected"
    assert sink.mails_to(address) == []
    await sink.wait_accepting()

    async with httpx.AsyncClient(timeout=10) as http:
        replayed = await http.post(
            f"{cluster['audit-log-service'].url}/audit/dead-letters/{letter['id']}/replay",
            headers=OPERATOR,
        )
    assert replayed.status_code == 200, replayed.text

    async def sent() -> bool:
        [row] = await notifier.history(user_id)
        return bool(row["status"] == "sent")

    await eventually(
        sent, timeout=30, what="the replayed notification sent",
        check=notifier.service.check_alive,
    )  # fmt: skip
    assert mails_by_event(sink, address) == {event.event_id: 1}


# --- a new consumer group and the history on its topic --------------------------------------


async def produce(stack: Stack, topic: str, event: TaskEvent, *, appended_at: datetime) -> None:
    """Straight to Kafka, with the record's timestamp set: history older than any test."""
    producer = AIOKafkaProducer(**kafka_client_options(stack.kafka_brokers))
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            cloud_event(event.model_dump(mode="json"), event_id=event.event_id, topic=topic),
            key=event.task_id.encode(),
            timestamp_ms=int(appended_at.timestamp() * 1000),
        )
    finally:
        await producer.stop()


def start_at_the_oldest_offset(resources: Path) -> None:
    """As deployed (dapr-components/kafka-pubsub.yaml): the harness starts test groups at
    the newest offset, this one must read the topic's history."""
    path = resources / "kafka-pubsub.yaml"
    document = yaml.safe_load(path.read_text())
    for entry in document["spec"]["metadata"]:
        if entry["name"] == "initialOffset":
            entry["value"] = "oldest"
    path.write_text(yaml.safe_dump(document, sort_keys=False))


async def test_a_new_consumer_group_does_not_mail_the_history_on_the_topic(
    stack: Stack, sink: Sink, unique: str
) -> None:
    user_id, address = f"user-{unique}", f"history-{unique}@example.com"
    now = datetime.now(UTC)
    old = [created(user_id, f"task-{unique}-old-{i}", address) for i in range(2)]
    fresh = created(user_id, f"task-{unique}-new", address)
    # A replayed dead letter or a caught-up occurrence: an old timestamp, appended now.
    replayed = created(
        user_id, f"task-{unique}-replayed", address, timestamp=now - timedelta(days=3)
    )
    admin = AIOKafkaAdminClient(**kafka_client_options(stack.kafka_brokers))
    await admin.start()
    await admin.create_topics([NewTopic(NOTIFY_HISTORY_TOPIC, 2, 1)])
    try:
        for event in old:
            await produce(stack, NOTIFY_HISTORY_TOPIC, event, appended_at=now - timedelta(hours=2))
        for event in (fresh, replayed):
            await produce(stack, NOTIFY_HISTORY_TOPIC, event, appended_at=now)

        spec, consumer = service_spec(
            stack,
            HISTORY_APP_ID,
            command=[str(VENV_BIN / "notification-service")],
            extra_resources=[subscription(HISTORY_APP_ID, NOTIFY_HISTORY_TOPIC)],
            role="notification-service",
            env=notifier_env(
                sink, HISTORY_APP_ID, NOTIFY_MAX_EVENT_AGE_SECONDS=str(MAX_EVENT_AGE_SECONDS)
            ),
        )
        start_at_the_oldest_offset(spec.resources_paths[0])
        service = start_service(stack, spec, consumer)
        try:

            async def decided() -> list[dict[str, Any]] | None:
                rows = await history(service.url, user_id)
                done = [r for r in rows if r["status"] in ("sent", "too_old")]
                return rows if len(done) == 4 else None

            rows = await eventually(
                decided, timeout=90, what="all four events handled", check=service.check_alive
            )
        finally:
            service.app.stop()
    finally:
        await admin.delete_topics([NOTIFY_HISTORY_TOPIC])
        await admin.close()
        await forget_ledger(stack, HISTORY_APP_ID)

    status = {r["event_id"]: r["status"] for r in rows}
    assert status == {
        old[0].event_id: "too_old", old[1].event_id: "too_old",
        fresh.event_id: "sent", replayed.event_id: "sent",
    }  # fmt: skip
    reasons = [r["reason"] for r in rows if r["status"] == "too_old"]
    assert all(str(MAX_EVENT_AGE_SECONDS) in reason for reason in reasons), reasons
    assert mails_by_event(sink, address) == {fresh.event_id: 1, replayed.event_id: 1}
