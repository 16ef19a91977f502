"""Every dead letter says why and which app gave up, and keeps its partition key — checked on
the real dead-letter topic and in the audit log's API, with the session's four services and
their sidecars: an event every subscriber refuses becomes one reasoned dead letter per app
(each app publishes its own), and a message daprd itself dead-letters (not even JSON) keeps
its key and says what can be told of it (not which sidecar made it: see
audit_log_service.handlers.app_that_gave_up)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from taskevents.status import DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.kafka import DLQ_TOPIC, cloud_event, end_offsets, produce_raw, read_from
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SUBSCRIBERS = {
    "audit-log-service",
    "notification-service",
    "recurring-task-service",
    "websocket-service",
}


async def dead_letters_keyed(
    stack: Stack, start: dict[Any, int], key: str, *, at_least: int
) -> list[dict[str, Any]] | None:
    found = [m for m in await read_from(stack.kafka_brokers, start, until=1.0) if m["key"] == key]
    return found if len(found) >= at_least else None


async def one_from_every_subscriber(
    cluster: Cluster, stack: Stack, start: dict[Any, int], key: str
) -> list[dict[str, Any]]:
    return await eventually(
        lambda: dead_letters_keyed(stack, start, key, at_least=len(SUBSCRIBERS)),
        timeout=60,
        what="a dead letter from every subscriber",
        check=cluster.check_alive,
    )


async def audit_letters(
    http: httpx.AsyncClient, cluster: Cluster, event_type: str
) -> list[dict[str, Any]]:
    response = await http.get(
        f"{cluster['audit-log-service'].url}/audit/dead-letters",
        params={"type": event_type, "limit": 50},
        headers=bearer("ops", operator=True),
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_an_event_every_subscriber_refuses_is_one_reasoned_dead_letter_per_app(
    cluster: Cluster, stack: Stack, http: httpx.AsyncClient, unique: str
) -> None:
    key = f"task-{unique}"
    event_type = f"probe.invalid.{unique}"
    invalid = {
        "event_id": f"e-{unique}",
        "type": event_type,
        "task_id": key,
        "user_id": f"user-{unique}",
        "timestamp": "yesterday",  # not a time: no subscriber can take it
    }
    start = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    await produce_raw(stack.kafka_brokers, cloud_event(invalid), key=key)

    letters = await one_from_every_subscriber(cluster, stack, start, key)

    by_app = {m["headers"].get(DEAD_LETTER_SOURCE_HEADER): m for m in letters}
    assert set(by_app) == SUBSCRIBERS  # each says who, none came from daprd reasonless
    for app, message in by_app.items():
        assert "timestamp" in message["headers"][DEAD_LETTER_REASON_HEADER], app
        assert message["key"] == key  # the partition key kept
        assert message["body"]["data"]["event_id"] == f"e-{unique}"  # the event as delivered

    async def filed_per_app() -> list[dict[str, Any]] | None:
        items = await audit_letters(http, cluster, event_type)
        return items if {i["app"] for i in items} >= SUBSCRIBERS else None

    items = await eventually(filed_per_app, what="the dead letters in the audit log")
    assert len(items) == len(SUBSCRIBERS)
    for item in items:
        assert "timestamp" in item["reason"], item
        assert item["metadata"]["__key"] == key


async def test_an_event_over_the_size_limit_is_dead_lettered_by_every_app_with_that_reason(
    cluster: Cluster, stack: Stack, unique: str
) -> None:
    """A valid event, but larger than TASKEVENTS_MAX_EVENT_BYTES (256 KiB; Kafka takes up to
    1 MB): every subscriber refuses it unread and files it with the limit as the reason."""
    key = f"task-{unique}"
    event = {
        "event_id": f"e-{unique}",
        "type": "task.created",
        "task_id": key,
        "user_id": f"user-{unique}",
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"title": "big", "notes": "x" * (300 * 1024)},
    }
    start = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    await produce_raw(stack.kafka_brokers, cloud_event(event), key=key)

    letters = await one_from_every_subscriber(cluster, stack, start, key)
    by_app = {m["headers"].get(DEAD_LETTER_SOURCE_HEADER): m for m in letters}
    assert set(by_app) == SUBSCRIBERS
    for app, message in by_app.items():
        reason = message["headers"][DEAD_LETTER_REASON_HEADER]
        assert "over the limit of 262144" in reason, (app, reason)
        assert message["key"] == key


async def test_a_message_daprd_dead_letters_itself_keeps_its_key_and_says_what_is_known(
    cluster: Cluster, stack: Stack, http: httpx.AsyncClient, unique: str
) -> None:
    key = f"task-{unique}"
    body = f"not json {unique} {datetime.now(UTC).isoformat()}".encode()
    start = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    await produce_raw(stack.kafka_brokers, body, key=key)

    # Every subscriber's sidecar gives up on it before any app sees it.
    letters = await eventually(
        lambda: dead_letters_keyed(stack, start, key, at_least=len(SUBSCRIBERS)),
        timeout=60,
        what="the sidecars' dead letters",
        check=cluster.check_alive,
    )
    assert {m["key"] for m in letters} == {key}
    assert {m["headers"].get("__key") for m in letters} == {key}
    assert all(DEAD_LETTER_SOURCE_HEADER not in m["headers"] for m in letters)
    assert {m["headers"].get("pubsubName") for m in letters} == {
        "kafka-pubsub",
        "websocket-pubsub",
    }

    async def filed() -> list[dict[str, Any]] | None:
        response = await http.get(
            f"{cluster['audit-log-service'].url}/audit/dead-letters",
            params={"original_topic": "task-events", "limit": 200},
            headers=bearer("ops", operator=True),
        )
        response.raise_for_status()
        ours = [i for i in response.json()["items"] if i["raw"] == body.decode()]
        return ours if ours and ours[0]["seen_count"] >= len(SUBSCRIBERS) else None

    # The sidecar that delivers a dead letter to the audit log puts its own component in
    # pubsubName, so the copies cannot be told apart there: one letter, seen four times,
    # with the reason the audit log finds and no app.
    [item] = await eventually(filed, what="the letter in the audit log")
    assert item["app"] is None
    assert item["reason"].startswith("body is not JSON"), json.dumps(item)
    assert item["metadata"]["__key"] == key
