"""Delivery through real daprd sidecars, a real Kafka broker, Postgres and an SMTP server:
one event reaches all four services; redeliveries change nothing; what can never be
processed ends in the dead-letter topic."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import websockets
import yaml

from taskevents.events import EventType, TaskEvent
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.support.authorization import bearer, token
from tests.support.cluster import COMPONENTS, Service, service_spec, start_service
from tests.support.kafka import (
    DLQ_TOPIC,
    cloud_event,
    end_offsets,
    produce_raw,
    read_from,
    wait_until_consuming,
)
from tests.support.mailbox import mails_to
from tests.support.refusing_app import ROUTE
from tests.support.stack import ROOT, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def audit_rows(
    http: httpx.AsyncClient, cluster: Cluster, user_id: str, task_id: str
) -> list[dict[str, Any]]:
    response = await http.get(
        f"{cluster['audit-log-service'].url}/audit/events",
        params={"task_id": task_id},
        headers=bearer(user_id),
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_one_event_reaches_all_four_services(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    address = f"{unique}@example.com".lower()
    websocket = cluster["websocket-service"]
    url = f"ws://127.0.0.1:{websocket.app.spec.app_port}/ws?token={token(user_id)}"
    async with websockets.connect(url) as client:
        welcome = json.loads(await client.recv())
        assert welcome["kind"] == "welcome"
        assert welcome["user_id"] == user_id

        event = TaskEvent.create(
            EventType.TASK_CREATED,
            task_id=task_id,
            user_id=user_id,
            payload={
                "title": "Pay rent",
                "due_at": "2026-12-01T09:00:00Z",
                "user_email": address,
                "recurrence": {"interval_seconds": 86400},
            },
        )
        await publisher.publish(event)

        # websocket-service: the frame, carrying the whole event.
        frame = json.loads(await _recv_within(client, 30))
        assert frame["kind"] == "event"
        assert frame["v"] == 1
        assert TaskEvent.model_validate(frame["event"]) == event

    # audit-log-service: one row with the event's fields.
    rows = await eventually(
        lambda: audit_rows(http, cluster, user_id, task_id),
        what="audit row",
        check=cluster.check_alive,
    )
    assert [r["event_id"] for r in rows] == [event.event_id]
    assert rows[0]["type"] == "task.created"
    assert rows[0]["user_id"] == user_id
    assert rows[0]["payload"]["title"] == "Pay rent"
    # The Kafka coordinates daprd passes with the delivery are kept.
    assert rows[0]["kafka_partition"] in range(6)
    assert rows[0]["kafka_offset"] >= 0

    # notification-service: one mail with both parts in the SMTP server's store.
    async def mails() -> list[Any]:
        return mails_to(stack.mail_dir, address)

    received = await eventually(mails, what="mail", check=cluster.check_alive)
    assert len(received) == 1
    assert "Pay rent" in received[0].subject
    assert received[0].header("X-Taskevents-Event-Id") == event.event_id
    assert "Pay rent" in (received[0].part("text/plain") or "")
    assert "Pay rent" in (received[0].part("text/html") or "")

    # recurring-task-service: the task's recurrence became a schedule.
    async def schedules() -> list[Any]:
        response = await http.get(
            f"{cluster['recurring-task-service'].url}/schedules",
            params={"user_id": user_id},
            headers=bearer(user_id),
        )
        response.raise_for_status()
        return [s for s in response.json()["schedules"] if s["task_id"] == task_id]

    found = await eventually(schedules, what="schedule", check=cluster.check_alive)
    assert found[0]["interval_seconds"] == 86400


async def test_redelivered_event_leaves_one_audit_row(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    event = TaskEvent.create(
        EventType.TASK_UPDATED, task_id=f"task-{unique}", user_id=f"user-{unique}",
        payload={"title": "twice"},
    )  # fmt: skip
    await publisher.publish(event)
    await publisher.publish(event)
    # The same bytes again straight onto the topic, under another CloudEvent id, as a
    # producer retry would.
    await produce_raw(
        stack.kafka_brokers, cloud_event(json.loads(event.to_json())), key=event.task_id
    )
    marker = TaskEvent.create(
        EventType.TASK_COMPLETED, task_id=event.task_id, user_id=event.user_id
    )
    await publisher.publish(marker)

    # Events of one task keep their order, so once the marker is stored the copies are
    # all handled.
    async def marker_stored() -> list[dict[str, Any]] | None:
        rows = await audit_rows(http, cluster, event.user_id, event.task_id)
        return rows if any(r["event_id"] == marker.event_id for r in rows) else None

    rows = await eventually(marker_stored, what="marker row", check=cluster.check_alive)
    assert sorted(r["event_id"] for r in rows) == sorted([event.event_id, marker.event_id])


async def test_invalid_event_is_dead_lettered_and_kept_with_its_reason(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    before = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    bad = {"event_id": f"bad-{unique}", "type": "task.created", "user_id": "u"}  # no task_id
    await publisher.publish_raw(json.dumps(bad).encode(), key=f"bad-{unique}")

    async def in_dlq() -> list[dict[str, Any]]:
        messages = await read_from(stack.kafka_brokers, before, until=1.0)
        return [m for m in messages if m["body"].get("data", {}).get("event_id") == bad["event_id"]]

    dead = await eventually(
        in_dlq, timeout=60, what="message in the DLQ", check=cluster.check_alive
    )
    assert dead[0]["body"]["topic"] == "task-events"

    async def kept() -> list[dict[str, Any]]:
        response = await http.get(
            f"{cluster['audit-log-service'].url}/audit/dead-letters",
            headers=bearer("operator", operator=True),
        )
        response.raise_for_status()
        return [d for d in response.json()["items"] if d.get("event_id") == bad["event_id"]]

    letters = await eventually(kept, what="dead letter in the audit log", check=cluster.check_alive)
    assert letters[0]["original_topic"] == "task-events"


@pytest_asyncio.fixture(scope="module")
async def refusing_subscriber(stack: Stack, cluster: Cluster) -> AsyncIterator[Service]:
    subscription = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": "poison-probe"},
        "spec": {
            "pubsubname": "kafka-pubsub",
            "topic": "task-events",
            "routes": {"default": ROUTE},
            "deadLetterTopic": DLQ_TOPIC,
        },
        "scopes": ["poison-probe"],
    }
    # It subscribes and dead-letters as notification-service does (its topic scopes), with
    # the seconds-long retries of the shared Resiliency (resiliency.yaml; notification's own
    # rides out minutes of database outage) that websocket-service and the CLI follow.
    spec, consumer = service_spec(
        stack,
        "poison-probe",
        extra_resources=[subscription],
        role="notification-service",
        resiliency_of="websocket-service",
    )
    spec.command = [sys.executable, "-m", "tests.support.refusing_app", str(spec.app_port)]
    spec.env["PYTHONPATH"] = str(ROOT)
    service = start_service(stack, spec, consumer)
    try:
        await wait_until_consuming(stack.kafka_brokers, service.consumer_groups)
        yield service
    finally:
        service.app.stop()


async def test_poison_message_ends_in_the_dlq_after_the_bounded_retries(
    refusing_subscriber: Service, publisher: EventPublisher, http: httpx.AsyncClient,
    stack: Stack, unique: str,
) -> None:  # fmt: skip
    max_retries = configured_delivery_retries()
    before = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    poison = TaskEvent.create(
        EventType.TASK_UPDATED, task_id=f"poison-{unique}", user_id=f"user-{unique}"
    )
    await publisher.publish(poison)

    async def in_dlq() -> list[dict[str, Any]]:
        messages = await read_from(stack.kafka_brokers, before, until=1.0)
        return [m for m in messages if m["body"].get("id") == poison.event_id]

    dead = await eventually(
        in_dlq, timeout=90, what="poison in the DLQ", check=refusing_subscriber.check_alive
    )
    assert dead[0]["body"]["data"]["event_id"] == poison.event_id
    response = await http.get(f"{refusing_subscriber.url}/attempts/{poison.event_id}")
    assert response.json()["attempts"] == 1 + max_retries


def configured_delivery_retries() -> int:
    policy = yaml.safe_load((COMPONENTS / "resiliency.yaml").read_text())
    retries: int = policy["spec"]["policies"]["retries"]["deliveryRetry"]["maxRetries"]
    return retries


async def _recv_within(client: websockets.ClientConnection, seconds: float) -> str | bytes:
    import asyncio

    return await asyncio.wait_for(client.recv(), seconds)
