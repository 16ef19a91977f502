"""Schedules from task events, through the real sidecars and Kafka: task.created and
task.updated with `recurrence` set the task's schedule, task.deleted removes it (and a
replay of the older creation does not bring it back), and a recurrence of the kind "N days
after completion" fires once after each task.completed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from recurring_task_service.schedules import occurrence_event_id, occurrence_iso
from taskevents.events import EventType, TaskEvent
from taskevents.kafka import kafka_client_options
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.integration.test_recurring_replicas import triggered
from tests.support.authorization import bearer
from tests.support.kafka import TOPIC, end_offsets, read_from
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def task_schedule(
    http: httpx.AsyncClient, cluster: Cluster, user_id: str, task_id: str
) -> dict[str, Any] | None:
    response = await http.get(
        f"{cluster['recurring-task-service'].url}/schedules",
        params={"user_id": user_id},
        headers=bearer(user_id),
    )
    response.raise_for_status()
    found = [s for s in response.json()["schedules"] if s["task_id"] == task_id]
    return found[0] if found else None


async def wait_until_handled(
    stack: Stack, cluster: Cluster, event: TaskEvent, before: dict[TopicPartition, int]
) -> None:
    """Wait until the service's consumer group has committed past `event`'s message."""
    messages = await eventually(
        lambda: _find(stack, before, event.event_id), what="the event on the topic"
    )
    tp = TopicPartition(TOPIC, messages["partition"])
    admin = AIOKafkaAdminClient(**kafka_client_options(stack.kafka_brokers))
    await admin.start()
    try:

        async def committed() -> bool:
            for group in cluster["recurring-task-service"].consumer_groups:
                offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
                done = offsets.get(tp)
                if done is None or done.offset <= messages["offset"]:
                    return False
            return True

        await eventually(committed, what="the event handled", check=cluster.check_alive)
    finally:
        await admin.close()


async def _find(
    stack: Stack, before: dict[TopicPartition, int], event_id: str
) -> dict[str, Any] | None:
    for message in await read_from(stack.kafka_brokers, before, until=0.5):
        if message["body"].get("id") == event_id:
            return message
    return None


async def test_task_events_create_update_and_delete_the_schedule(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    created = TaskEvent.create(
        EventType.TASK_CREATED,
        task_id=task_id,
        user_id=user_id,
        payload={"title": "Stretch", "recurrence": {"interval_seconds": 2}},
    )
    await publisher.publish(created)

    async def with_interval(seconds: int) -> dict[str, Any] | None:
        schedule = await task_schedule(http, cluster, user_id, task_id)
        return schedule if schedule and schedule["interval_seconds"] == seconds else None

    schedule = await eventually(
        lambda: with_interval(2), what="the schedule", check=cluster.check_alive
    )
    assert schedule["payload"] == {"title": "Stretch"}

    async def fired() -> list[dict[str, Any]] | None:
        events = triggered(await read_from(stack.kafka_brokers, before, until=0.5), {task_id})
        return events if len(events) >= 2 else None

    events = await eventually(fired, timeout=30, what="two triggered events")
    assert all(e["payload"]["title"] == "Stretch" for e in events)
    assert all(e["payload"]["schedule_id"] == schedule["id"] for e in events)

    updated = TaskEvent.create(
        EventType.TASK_UPDATED,
        task_id=task_id,
        user_id=user_id,
        payload={"title": "Stretch more", "recurrence": {"cron": "0 9 * * 1-5",
                                                          "timezone": "America/New_York"}},
    )  # fmt: skip
    await publisher.publish(updated)

    async def with_cron() -> dict[str, Any] | None:
        found = await task_schedule(http, cluster, user_id, task_id)
        return found if found and found["cron"] == "0 9 * * 1-5" else None

    changed = await eventually(with_cron, what="the updated schedule", check=cluster.check_alive)
    assert changed["id"] == schedule["id"]
    assert changed["timezone"] == "America/New_York"
    assert changed["payload"] == {"title": "Stretch more"}
    assert changed["interval_seconds"] is None

    deleted = TaskEvent.create(EventType.TASK_DELETED, task_id=task_id, user_id=user_id)
    await publisher.publish(deleted)

    async def gone() -> bool:
        return await task_schedule(http, cluster, user_id, task_id) is None

    await eventually(gone, what="the schedule removed", check=cluster.check_alive)

    # The creation again, as a replay of the topic would bring it: it is older than the
    # deletion, so it must not bring the schedule back.
    replay_from = await end_offsets(stack.kafka_brokers, TOPIC)
    await publisher.publish(created)
    await wait_until_handled(stack, cluster, created, replay_from)
    assert await task_schedule(http, cluster, user_id, task_id) is None


async def test_after_completion_recurrence_fires_once_after_each_completion(
    cluster: Cluster, publisher: EventPublisher, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    delay = timedelta(seconds=3)
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    await publisher.publish(
        TaskEvent.create(
            EventType.TASK_CREATED,
            task_id=task_id,
            user_id=user_id,
            payload={
                "title": "Water the plants",
                "recurrence": {"after_completion_days": delay / timedelta(days=1)},
            },
        )
    )

    async def waiting() -> dict[str, Any] | None:
        found = await task_schedule(http, cluster, user_id, task_id)
        return found if found and found["state"] == "waiting_for_completion" else None

    schedule = await eventually(waiting, what="the waiting schedule", check=cluster.check_alive)
    assert schedule["next_fire_at"] is None

    fired_ids = []
    for _ in range(2):
        completed_at = datetime.now(UTC)
        await publisher.publish(
            TaskEvent.create(
                EventType.TASK_COMPLETED, task_id=task_id, user_id=user_id, timestamp=completed_at
            )
        )
        occurrence = completed_at + delay
        event_id = occurrence_event_id(uuid.UUID(schedule["id"]), occurrence)

        async def fired(event_id: str = event_id) -> dict[str, Any] | None:
            messages = await read_from(stack.kafka_brokers, before, until=0.5)
            found = [e for e in triggered(messages, {task_id}) if e["event_id"] == event_id]
            return found[0] if found else None

        event = await eventually(
            fired,
            timeout=30,
            what="the triggered event after completion",
            check=cluster.check_alive,
        )
        assert event["payload"]["occurrence"] == occurrence_iso(occurrence)
        assert event["payload"]["title"] == "Water the plants"
        fired_ids.append(event_id)

    # One event per completion, nothing in between.
    messages = await read_from(stack.kafka_brokers, before, until=1.0)
    assert sorted(e["event_id"] for e in triggered(messages, {task_id})) == sorted(fired_ids)
    after = await task_schedule(http, cluster, user_id, task_id)
    assert after is not None
    assert after["fire_count"] == 2
    assert after["state"] == "waiting_for_completion"
