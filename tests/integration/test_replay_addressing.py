"""An operator's replay of a dead letter is for the app that gave up on the message (the
audit log keeps one letter per message and app): on the real stack, a WebSocket client that
had an event gets no second frame when notification-service's dead letter of it is replayed,
and does get the event when websocket-service's own letter of it is replayed. The replay
carries its app in the CloudEvent (`replayfor`), through daprd, Kafka and daprd again, to
a bulk route (websocket-service) and a single one (notification-service)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from taskevents.events import EventType, TaskEvent
from taskevents.publisher import EventPublisher
from taskevents.status import DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER
from tests.conftest import Cluster
from tests.support.authorization import bearer, token
from tests.support.cluster import Service
from tests.support.kafka import DLQ_TOPIC, cloud_event, produce_raw
from tests.support.live_stream import connect, until
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

OPERATOR = bearer("ops", operator=True)


async def letter_of(
    http: httpx.AsyncClient, cluster: Cluster, event_id: str, app: str
) -> dict[str, Any] | None:
    response = await http.get(
        f"{cluster['audit-log-service'].url}/audit/dead-letters",
        params={"type": "task.created", "limit": 200},
        headers=OPERATOR,
    )
    response.raise_for_status()
    found = [i for i in response.json()["items"] if i["event_id"] == event_id and i["app"] == app]
    return found[0] if found else None


async def replays_skipped(http: httpx.AsyncClient, service: Service, app: str) -> float:
    """taskevents_replays_for_other_apps_total of one service, for replays meant for `app`."""
    text = (await http.get(f"{service.url}/metrics")).text
    pattern = (
        r'^taskevents_replays_for_other_apps_total\{[^}]*app="'
        + re.escape(app)
        + r'"[^}]*\} (\S+)$'
    )
    return sum(float(m) for m in re.findall(pattern, text, flags=re.MULTILINE))


async def replay(http: httpx.AsyncClient, cluster: Cluster, letter: dict[str, Any]) -> None:
    response = await http.post(
        f"{cluster['audit-log-service'].url}/audit/dead-letters/{letter['id']}/replay",
        headers=OPERATOR,
    )
    response.raise_for_status()


async def test_a_replay_reaches_only_the_app_whose_dead_letter_it_is(
    cluster: Cluster, stack: Stack, publisher: EventPublisher, http: httpx.AsyncClient, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    websocket, notification = cluster["websocket-service"], cluster["notification-service"]
    url = f"ws://127.0.0.1:{websocket.app.spec.app_port}/ws?token={token(user_id)}"
    # An address notification-service refuses for good: it dead-letters the event itself.
    event = TaskEvent.create(
        EventType.TASK_CREATED,
        task_id=task_id,
        user_id=user_id,
        payload={"title": "Replay me", "user_email": "not-an-address"},
    )
    first = await connect(url)
    await publisher.publish(event)
    await until(lambda: event.event_id in first.event_ids, timeout=30, what="the live frame")
    letter = await eventually(
        lambda: letter_of(http, cluster, event.event_id, "notification-service"),
        timeout=60,
        what="notification-service's dead letter",
        check=cluster.check_alive,
    )
    assert "not an email address" in letter["reason"]
    await first.close()

    # The same user's client, connected again: it has the event already.
    again = await connect(url)
    skipped_before = await replays_skipped(http, websocket, "notification-service")
    await replay(http, cluster, letter)
    # A marker after the replay on the same task (the same partition): once it is here,
    # websocket-service has handled the replay.
    marker = TaskEvent.create(EventType.TASK_UPDATED, task_id=task_id, user_id=user_id)
    await publisher.publish(marker)
    await until(lambda: marker.event_id in again.event_ids, timeout=30, what="the marker")
    assert again.event_ids == [marker.event_id]  # no second frame of the replayed event
    assert await replays_skipped(http, websocket, "notification-service") == skipped_before + 1
    # notification-service did handle its own replay: the address is still refused.
    await eventually(
        lambda: _seen_again(http, cluster, event.event_id),
        timeout=60,
        what="notification-service's letter seen again",
    )

    # websocket-service's own dead letter of the event (as its edge publishes one): its
    # replay is delivered, and the others acknowledge it unhandled.
    notification_skipped = await replays_skipped(http, notification, "websocket-service")
    await produce_raw(
        stack.kafka_brokers,
        cloud_event(event.model_dump(mode="json"), event_id=event.event_id),
        key=task_id,
        topic=DLQ_TOPIC,
        headers={
            DEAD_LETTER_SOURCE_HEADER: "websocket-service",
            DEAD_LETTER_REASON_HEADER: "probe: the client's queue was full",
        },
    )
    own = await eventually(
        lambda: letter_of(http, cluster, event.event_id, "websocket-service"),
        timeout=60,
        what="websocket-service's dead letter in the audit log",
    )
    await replay(http, cluster, own)
    await until(
        lambda: again.event_ids == [marker.event_id, event.event_id],
        timeout=30,
        what="the replayed event, once",
    )

    async def notification_skipped_it() -> bool:
        return await replays_skipped(http, notification, "websocket-service") > (
            notification_skipped
        )

    await eventually(notification_skipped_it, timeout=30, what="notification-service's ack")
    await again.close()


async def _seen_again(http: httpx.AsyncClient, cluster: Cluster, event_id: str) -> bool:
    letter = await letter_of(http, cluster, event_id, "notification-service")
    return letter is not None and letter["seen_count"] >= 2
