"""Catch-up after every replica was down: occurrences missed within the grace period are
published at start (each one, or one coalesced event), older ones are skipped and recorded.
The replicas here use a database of their own, so no other replica (the session's) can fire
the schedules while "every replica" is down."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from recurring_task_service.schedules import occurrence_event_id
from tests.conftest import Cluster
from tests.integration.test_recurring_replicas import triggered, whole_second_from_now
from tests.support.authorization import bearer
from tests.support.cluster import Service, service_spec, start_service
from tests.support.kafka import TOPIC, end_offsets, read_from
from tests.support.stack import Stack, scratch_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

INTERVAL = timedelta(seconds=2)
OCCURRENCES = 21
GRACE_SECONDS = 6
DOWN_SECONDS = 14


@pytest_asyncio.fixture(scope="module")
async def own_database(stack: Stack) -> AsyncIterator[str]:
    """A database for this module alone, dropped at the end."""
    async with scratch_database(stack, "taskevents_recurring") as url:
        yield url


def start_replica(stack: Stack, database_url: str, replica: int) -> Service:
    spec, consumer = service_spec(
        stack,
        "recurring-task-service",
        replica=replica,
        env={
            "DATABASE_URL": database_url,
            "RECURRING_CATCH_UP_GRACE_SECONDS": str(GRACE_SECONDS),
        },
    )
    return start_service(stack, spec, consumer, replica=replica)


def occurrence_of(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["payload"]["occurrence"])


def covered(run: dict[str, Any]) -> set[datetime]:
    first = datetime.fromisoformat(run["first_occurrence"])
    last = datetime.fromisoformat(run["last_occurrence"])
    found = set()
    while first <= last:
        found.add(first)
        first += INTERVAL
    assert len(found) == run["occurrences"], run
    return found


async def test_catch_up_after_every_replica_was_down_follows_the_policy(
    cluster: Cluster, stack: Stack, own_database: str, http: httpx.AsyncClient, unique: str
) -> None:
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    http.headers.update(bearer(f"user-{unique}"))  # the schedules' user
    first_replica = start_replica(stack, own_database, 11)
    second_replica: Service | None = None
    try:
        starts_at = whole_second_from_now(3)
        expected = {starts_at + k * INTERVAL for k in range(OCCURRENCES)}
        schedules: dict[str, dict[str, Any]] = {}
        for kind, coalesce in (("each", False), ("coalesced", True)):
            response = await http.post(
                f"{first_replica.url}/schedules",
                json={
                    "task_id": f"catch-up-{kind}-{unique}",
                    "user_id": f"user-{unique}",
                    "interval_seconds": int(INTERVAL.total_seconds()),
                    "starts_at": starts_at.isoformat(),
                    "ends_at": (starts_at + (OCCURRENCES - 1) * INTERVAL).isoformat(),
                    "coalesce_missed": coalesce,
                },
            )
            assert response.status_code == 201, response.text
            schedules[kind] = response.json()

        async def fired_twice() -> bool:
            for schedule in schedules.values():
                response = await http.get(f"{first_replica.url}/schedules/{schedule['id']}")
                if response.json()["fire_count"] < 2:
                    return False
            return True

        await eventually(
            fired_twice, timeout=30, what="two occurrences each", check=first_replica.check_alive
        )
        # Every replica of this database goes down, hard.
        first_replica.app.app.kill()  # type: ignore[union-attr]
        down_at = datetime.now(UTC)
        first_replica.app.stop()

        async def down_long_enough() -> bool:
            return datetime.now(UTC) >= down_at + timedelta(seconds=DOWN_SECONDS)

        await eventually(down_long_enough, timeout=DOWN_SECONDS + 5, what="the outage")
        second_replica = start_replica(stack, own_database, 12)
        up_url = second_replica.url

        async def finished() -> bool:
            for schedule in schedules.values():
                response = await http.get(f"{up_url}/schedules/{schedule['id']}")
                if response.json()["state"] != "finished":
                    return False
            return True

        await eventually(
            finished, timeout=60, what="both schedules over", check=second_replica.check_alive
        )
        messages = await read_from(stack.kafka_brokers, before, until=2.0)
        missed = {}
        for kind, schedule in schedules.items():
            response = await http.get(f"{up_url}/schedules/{schedule['id']}/missed")
            missed[kind] = response.json()["missed"]
    finally:
        first_replica.app.stop()
        if second_replica is not None:
            second_replica.app.stop()

    # One at a time: every occurrence is published once or recorded as skipped, never both.
    each = schedules["each"]
    events = triggered(messages, {each["task_id"]})
    published = Counter(occurrence_of(e) for e in events)
    assert all(
        e["event_id"] == occurrence_event_id(uuid.UUID(each["id"]), occurrence_of(e))
        for e in events
    )
    repeated = [o for o, n in published.items() if n > 1]
    assert all(abs(o - down_at) < 2 * INTERVAL for o in repeated), repeated  # a kill mid-relay
    [skipped_run] = missed["each"]
    assert skipped_run["reason"] == "beyond_grace"
    skipped = covered(skipped_run)
    assert set(published) | skipped == expected
    assert not set(published) & skipped
    # Skipped: older than the grace period when the new replica claimed them; the first
    # published after the outage was within it.
    claimed_at = datetime.fromisoformat(skipped_run["recorded_at"])
    horizon = claimed_at - timedelta(seconds=GRACE_SECONDS)
    assert max(skipped) < horizon
    caught_up = [o for o in published if o > max(skipped) and o <= claimed_at]
    assert caught_up, "nothing missed within the grace period was published at start"
    assert min(caught_up) >= horizon
    assert max(skipped) > down_at  # the outage did cost occurrences

    # Coalesced: the occurrences missed within the grace period became one event.
    coalesced_schedule = schedules["coalesced"]
    events = triggered(messages, {coalesced_schedule["task_id"]})
    published = Counter(occurrence_of(e) for e in events)
    # A claim that comes late (a busy machine) coalesces too, so every coalesced event is
    # matched with its recorded run; the one after the outage must be among them.
    runs = missed["coalesced"]
    skipped_runs = [r for r in runs if r["reason"] == "beyond_grace"]
    coalesced_runs = {r["first_occurrence"]: r for r in runs if r["reason"] == "coalesced"}
    assert len(skipped_runs) == 1
    skipped = covered(skipped_runs[0])
    folded: set[datetime] = set()
    coalesced_events = [e for e in events if "coalesced" in e["payload"]]
    for event in coalesced_events:
        run = coalesced_runs.pop(event["payload"]["coalesced"]["first_occurrence"])
        assert event["payload"]["coalesced"]["occurrences"] == run["occurrences"] + 1
        run_occurrences = covered(run)
        assert occurrence_of(event) == max(run_occurrences) + INTERVAL
        assert not folded & run_occurrences
        folded |= run_occurrences
    assert coalesced_runs == {}, "a coalesced run without its event"
    after_outage = [e for e in coalesced_events if occurrence_of(e) > max(skipped)]
    assert after_outage, "the occurrences missed within the grace period were not coalesced"
    assert set(published) | folded | skipped == expected
    assert not set(published) & folded
    assert not set(published) & skipped
    assert not folded & skipped
    log.info(
        "outage %ss: skipped %d, caught up %d one by one, coalesced %d into one",
        DOWN_SECONDS,
        skipped_run["occurrences"],
        len(caught_up),
        after_outage[0]["payload"]["coalesced"]["occurrences"],
    )
