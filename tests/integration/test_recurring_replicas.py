"""recurring-task-service as several replicas, each beside its own daprd, all on one schedule
table: 50 schedules firing every 3 seconds for a minute publish every occurrence exactly
once — also when one replica is SIGKILLed in the middle. Checked on the topic itself and in
the audit log (which keeps one row per event id)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from recurring_task_service.schedules import occurrence_event_id
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.cluster import Service, service_spec, start_service
from tests.support.kafka import TOPIC, end_offsets, read_from
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

SCHEDULES = 50
INTERVAL_SECONDS = 3
RUN_SECONDS = 60
OCCURRENCES = RUN_SECONDS // INTERVAL_SECONDS + 1  # both ends included
KILL_AFTER_SECONDS = 27


@pytest_asyncio.fixture(scope="module")
async def replicas(stack: Stack, cluster: Cluster) -> AsyncIterator[list[Service]]:
    """Two more replicas beside the session's one, each with its own sidecar."""
    started: list[Service] = []
    try:
        for replica in (1, 2):
            spec, consumer = service_spec(stack, "recurring-task-service", replica=replica)
            started.append(start_service(stack, spec, consumer, replica=replica))
        yield started
    finally:
        for service in started:
            service.app.stop()


def triggered(messages: Iterable[dict[str, Any]], task_ids: set[str]) -> list[dict[str, Any]]:
    """The task.recurring.triggered events of these tasks among messages read from the topic."""
    found = []
    for message in messages:
        data = message["body"].get("data")
        if (
            isinstance(data, dict)
            and data.get("type") == "task.recurring.triggered"
            and data.get("task_id") in task_ids
        ):
            found.append(data)
    return found


def whole_second_from_now(seconds: float) -> datetime:
    return datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)


async def audit_history(http: httpx.AsyncClient, cluster: Cluster, task_id: str) -> list[Any]:
    response = await http.get(
        f"{cluster['audit-log-service'].url}/audit/tasks/{task_id}/history",
        params={"limit": 500},
    )
    response.raise_for_status()
    items: list[Any] = response.json()["items"]
    return items


async def test_every_occurrence_is_published_exactly_once_across_replicas_and_a_kill(
    cluster: Cluster, replicas: list[Service], stack: Stack, http: httpx.AsyncClient, unique: str
) -> None:
    first, second = replicas
    http.headers.update(bearer(f"user-{unique}"))  # the schedules' user
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    starts_at = whole_second_from_now(8)  # time to create them all first
    ends_at = starts_at + timedelta(seconds=RUN_SECONDS)
    task_ids = [f"rep-{i}-{unique}" for i in range(SCHEDULES)]

    async def create(task_id: str) -> dict[str, Any]:
        response = await http.post(
            f"{first.url}/schedules",
            json={
                "task_id": task_id,
                "user_id": f"user-{unique}",
                "interval_seconds": INTERVAL_SECONDS,
                "starts_at": starts_at.isoformat(),
                "ends_at": ends_at.isoformat(),
                "payload": {"title": "replicas"},
            },
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    created = await asyncio.gather(*(create(t) for t in task_ids))
    schedule_ids = {s["task_id"]: uuid.UUID(s["id"]) for s in created}
    expected = {
        occurrence_event_id(schedule_ids[t], starts_at + timedelta(seconds=k * INTERVAL_SECONDS))
        for t in task_ids
        for k in range(OCCURRENCES)
    }

    def alive() -> None:
        cluster.check_alive()
        first.check_alive()

    # Let the three replicas share the work for a while, then SIGKILL one mid-run.
    kill_at = starts_at + timedelta(seconds=KILL_AFTER_SECONDS)

    async def kill_time() -> bool:
        return datetime.now(UTC) >= kill_at

    await eventually(kill_time, timeout=RUN_SECONDS, what="the kill time", check=alive)
    second.app.app.kill()  # type: ignore[union-attr]
    killed_at = datetime.now(UTC)

    async def all_published() -> list[dict[str, Any]] | None:
        events = triggered(await read_from(stack.kafka_brokers, before, until=1.0), set(task_ids))
        return events if {e["event_id"] for e in events} >= expected else None

    log.info("killed a replica at %s", killed_at)
    await eventually(
        all_published,
        timeout=RUN_SECONDS + 60,
        interval=3.0,
        what=f"{len(expected)} triggered events",
        check=alive,
    )
    # Read once more after everything is done, so a late duplicate would show.
    events = triggered(await read_from(stack.kafka_brokers, before, until=3.0), set(task_ids))

    ids = Counter(e["event_id"] for e in events)
    assert set(ids) == expected, "an occurrence missing, or one that should not exist"
    for event in events:
        occurrence = datetime.fromisoformat(event["payload"]["occurrence"])
        assert event["event_id"] == occurrence_event_id(schedule_ids[event["task_id"]], occurrence)
        assert starts_at <= occurrence <= ends_at
    repeated = {event_id: n for event_id, n in ids.items() if n > 1}
    # A republish can only come from a replica killed between publishing an outbox row and
    # deleting it: the same event id again, for an occurrence relayed around the kill.
    for event in events:
        if event["event_id"] in repeated:
            occurrence = datetime.fromisoformat(event["payload"]["occurrence"])
            assert abs(occurrence - killed_at) < timedelta(seconds=2 * INTERVAL_SECONDS), event
    assert len(repeated) <= SCHEDULES
    log.info(
        "%d occurrences, %d messages, %d republished around the kill",
        len(ids),
        len(events),
        len(repeated),
    )

    # Downstream, the audit log keeps each occurrence exactly once.
    async def audited() -> dict[str, list[Any]] | None:
        rows = {t: await audit_history(http, cluster, t) for t in task_ids}
        complete = all(len(r) >= OCCURRENCES for r in rows.values())
        return rows if complete else None

    rows = await eventually(audited, timeout=60, interval=2.0, what="audit rows", check=alive)
    audited_ids = Counter(r["event_id"] for per_task in rows.values() for r in per_task)
    assert set(audited_ids) == expected
    assert max(audited_ids.values()) == 1

    # The schedules ended on their own after their last occurrence.
    for task_id in task_ids:
        response = await http.get(f"{first.url}/schedules/{schedule_ids[task_id]}")
        body = response.json()
        assert body["state"] == "finished"
        assert body["fire_count"] == OCCURRENCES
        assert body["last_fired_at"] is not None
    await asyncio.gather(
        *(http.delete(f"{first.url}/schedules/{schedule_ids[t]}") for t in task_ids)
    )
