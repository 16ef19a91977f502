"""The recurring outbox against real Postgres, a real sidecar and Kafka: the relay publishes
with no transaction or row lock held, two replicas publish each occurrence once, a crashed
replica's lease runs out and another publishes (the same event id, which the audit log keeps
once), a row that can never be published is parked with its reason while the rows behind it
go out, and a schedule whose time zone no longer reads is marked broken while the others
fire. The store runs on a database of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
import pytest_asyncio

from recurring_task_service.adapters.postgres import MIGRATION_LEDGER, PostgresSchedules
from recurring_task_service.firing import (
    RelayPolicy,
    claim_due_occurrences,
    relay_one_batch,
    relay_outbox,
    triggered_event,
)
from recurring_task_service.ports import ScheduleUpdate
from recurring_task_service.schedules import NewSchedule, Schedule, interval_rule
from recurring_task_service.settings import PACKAGE
from taskevents.events import EventType, TaskEvent
from taskevents.postgres import (
    PoolSettings,
    SchemaStatus,
    create_pool,
    migrate,
    packaged_migrations,
)
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.kafka import TOPIC, end_offsets, read_from
from tests.support.stack import Stack, scratch_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

GRACE = timedelta(minutes=5)
QUICK = RelayPolicy(
    max_attempts=2,
    first_backoff=timedelta(milliseconds=10),
    max_backoff=timedelta(milliseconds=10),
    lease=timedelta(seconds=30),
)
# Kafka's default limit is 1 MB a message: this event can never be published.
TOO_LARGE_BYTES = 1_500_000


@pytest_asyncio.fixture(scope="module")
async def database(stack: Stack) -> AsyncIterator[str]:
    async with scratch_database(stack, "taskevents_recurring_outbox") as url:
        await migrate(
            url, packaged_migrations(PACKAGE), MIGRATION_LEDGER, connect_timeout_seconds=5
        )
        yield url


async def open_store(url: str) -> tuple[PostgresSchedules, asyncpg.Pool]:
    pool = await create_pool(url, PoolSettings(max_size=3))
    return PostgresSchedules(pool, SchemaStatus(migrated=True)), pool


@pytest_asyncio.fixture
async def replicas(database: str) -> AsyncIterator[list[PostgresSchedules]]:
    """Two stores over pools of their own, as two replicas have; an empty outbox."""
    opened = [await open_store(database) for _ in range(2)]
    await opened[0][1].execute("DELETE FROM recurring_outbox; DELETE FROM recurring_schedules")
    yield [store for store, _ in opened]
    for _, pool in opened:
        await pool.close()


async def add_schedules(store: PostgresSchedules, task_ids: list[str], user_id: str) -> None:
    for task_id in task_ids:
        await store.create(
            NewSchedule(
                task_id=task_id,
                user_id=user_id,
                rule=interval_rule(3600),
                payload={"title": task_id},
                next_fire_at=datetime.now(UTC) - timedelta(seconds=1),
            )
        )


def triggered_on(messages: list[dict[str, object]], prefix: str) -> Counter[str]:
    """Event ids of the triggered events of these tasks on the topic, with their count."""
    found: Counter[str] = Counter()
    for message in messages:
        body = message["body"]
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict) and str(data.get("task_id", "")).startswith(prefix):
            found[str(data["event_id"])] += 1
    return found


PROBE_NAME = "outbox-lock-probe"


class LockProbe(EventPublisher):
    """Publishes for real; before each publish, checks from a connection of its own that
    nothing holds the outbox row locked or a transaction open in the database."""

    def __init__(self, inner: EventPublisher, url: str) -> None:
        self._inner = inner
        self._url = url
        self.problems: list[str] = []

    async def publish(
        self,
        event: TaskEvent,
        *,
        topic: str | None = None,
        cause: str | None = None,
        replay_for: str | None = None,
    ) -> None:
        # Named, so that the probes of events published side by side do not count each
        # other's short transactions.
        connection = await asyncpg.connect(
            self._url, server_settings={"application_name": PROBE_NAME}
        )
        try:
            async with connection.transaction():
                locked = await connection.fetch(
                    "SELECT id FROM recurring_outbox WHERE event_id = $1 FOR UPDATE NOWAIT",
                    event.event_id,
                )
            in_transaction = await connection.fetchval(
                """SELECT count(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND application_name <> $1
                      AND state LIKE 'idle in transaction%'""",
                PROBE_NAME,
            )
            if not locked:
                self.problems.append(f"{event.event_id}: no outbox row while publishing")
            if in_transaction:
                self.problems.append(f"{event.event_id}: a transaction is open while publishing")
        except asyncpg.LockNotAvailableError:
            self.problems.append(f"{event.event_id}: its row is locked while publishing")
        finally:
            await connection.close()
        await self._inner.publish(event, topic=topic, cause=cause, replay_for=replay_for)


async def test_the_relay_publishes_with_no_lock_or_transaction_held(
    replicas: list[PostgresSchedules],
    database: str,
    publisher: EventPublisher,
    stack: Stack,
    unique: str,
) -> None:
    store = replicas[0]
    tasks = [f"{unique}-{i}" for i in range(3)]
    await add_schedules(store, tasks, f"user-{unique}")
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    probe = LockProbe(publisher, database)

    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    relayed = await relay_outbox(store, probe, batch_size=10, policy=QUICK)

    assert probe.problems == []
    assert [r.published_at is not None for r in relayed] == [True] * 3
    published = triggered_on(await read_from(stack.kafka_brokers, before), unique)
    assert sorted(published.values()) == [1, 1, 1]


async def test_two_replicas_publish_each_occurrence_once(
    replicas: list[PostgresSchedules], publisher: EventPublisher, stack: Stack, unique: str
) -> None:
    tasks = [f"{unique}-{i}" for i in range(40)]
    await add_schedules(replicas[0], tasks, f"user-{unique}")
    before = await end_offsets(stack.kafka_brokers, TOPIC)

    await asyncio.gather(*(claim_due_occurrences(r, batch_size=7, grace=GRACE) for r in replicas))
    # Small batches side by side, so the replicas meet on the outbox.
    await asyncio.gather(
        *(relay_outbox(r, publisher, batch_size=5, policy=QUICK) for r in replicas)
    )

    published = triggered_on(await read_from(stack.kafka_brokers, before), unique)
    assert len(published) == 40
    assert set(published.values()) == {1}


async def test_a_crashed_replicas_lease_runs_out_and_another_publishes_once_for_consumers(
    replicas: list[PostgresSchedules],
    publisher: EventPublisher,
    stack: Stack,
    cluster: Cluster,
    http: httpx.AsyncClient,
    unique: str,
) -> None:
    crashed, survivor = replicas
    await add_schedules(crashed, [f"{unique}-leased", f"{unique}-sent"], f"user-{unique}")
    await claim_due_occurrences(crashed, batch_size=10, grace=GRACE)
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    # The first replica leases both, publishes one and dies before it records either.
    lease = await crashed.lease(limit=10, lease_seconds=1.0)
    sent = next(e for e in lease.entries if e.task_id.endswith("-sent"))
    assert sent.event is not None
    await publisher.publish(sent.event)

    assert (await survivor.lease(limit=10, lease_seconds=30)).entries == []  # leased
    after_the_lease = await eventually(
        lambda: relay_one_batch(survivor, publisher, batch_size=10, clock=_now, policy=QUICK),
        timeout=10,
        what="the crashed replica's lease to run out",
    )

    assert [r.published_at is not None for r in after_the_lease] == [True, True]
    published = triggered_on(await read_from(stack.kafka_brokers, before), unique)
    assert sorted(published.values()) == [1, 2]  # the one sent before the crash: again
    # ... under the same event id, which the audit log keeps once. A later event of the
    # same task (same partition) in the audit log means both copies were delivered.
    sent_task = f"{unique}-sent"
    marker = TaskEvent.create(EventType.TASK_UPDATED, task_id=sent_task, user_id=f"user-{unique}")
    await publisher.publish(marker)
    audit = cluster["audit-log-service"].url

    async def marker_recorded() -> list[object]:
        return await _audit_events(http, audit, sent_task, EventType.TASK_UPDATED)

    await eventually(marker_recorded, what="the marker in the audit log")
    triggered = await _audit_events(http, audit, sent_task, EventType.TASK_RECURRING_TRIGGERED)
    assert len(triggered) == 1, triggered


async def test_an_unpublishable_row_is_parked_with_its_reason_and_blocks_nothing(
    replicas: list[PostgresSchedules],
    database: str,
    publisher: EventPublisher,
    stack: Stack,
    unique: str,
) -> None:
    store = replicas[0]
    await add_schedules(store, [f"{unique}-huge", f"{unique}-fine"], f"user-{unique}")
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    connection = await asyncpg.connect(database)
    try:
        # One occurrence too large for Kafka, one not an event at all, both ahead of the rest.
        huge_schedule = await connection.fetchrow(
            "SELECT * FROM recurring_schedules WHERE task_id = $1", f"{unique}-huge"
        )
        schedule = await store.get(huge_schedule["id"])
        assert schedule is not None
        huge = triggered_event(schedule, datetime.now(UTC).replace(microsecond=0)).model_copy(
            update={"payload": {"blob": "x" * TOO_LARGE_BYTES}}
        )
        await connection.execute(
            """UPDATE recurring_outbox SET id = -2, event = $1 WHERE task_id = $2""",
            huge.to_json(),
            f"{unique}-huge",
        )
        await connection.execute(
            """INSERT INTO recurring_outbox (id, event_id, schedule_id, task_id, event, due_at)
               VALUES (-1, $1, $2, $3, '{"not": "an event"}', now())""",
            f"bad-{unique}",
            uuid.uuid4(),
            f"{unique}-unreadable",
        )
    finally:
        await connection.close()
    before = await end_offsets(stack.kafka_brokers, TOPIC)

    # Batches of one: before, the row at the head was the whole of every batch, for ever.
    for _ in range(6):
        await relay_outbox(store, publisher, batch_size=1, policy=QUICK)
        await asyncio.sleep(0.02)  # the back-off of QUICK: 10 ms

    parked = {p.task_id: p for p in await store.parked(limit=10)}
    assert set(parked) == {f"{unique}-huge", f"{unique}-unreadable"}
    assert parked[f"{unique}-unreadable"].reason.startswith("unreadable outbox row:")
    assert parked[f"{unique}-unreadable"].attempts == 1
    assert parked[f"{unique}-huge"].reason.startswith("gave up after 2 attempts:")
    published = triggered_on(await read_from(stack.kafka_brokers, before), unique)
    assert len(published) == 1  # the fine one, though batches of one met the others first
    assert await store.requeue(-1) is True
    assert {p.task_id for p in await store.parked(limit=10)} == {f"{unique}-huge"}


async def test_a_schedule_whose_time_zone_no_longer_reads_is_broken_and_the_others_fire(
    replicas: list[PostgresSchedules], database: str, unique: str
) -> None:
    store = replicas[0]
    await add_schedules(store, [f"{unique}-mars", f"{unique}-earth"], f"user-{unique}")
    connection = await asyncpg.connect(database)
    try:
        # As if a tz database update had removed the zone it was created with.
        await connection.execute(
            "UPDATE recurring_schedules SET timezone = 'Mars/Olympus_Mons' WHERE task_id = $1",
            f"{unique}-mars",
        )
    finally:
        await connection.close()

    first = await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    second = await claim_due_occurrences(store, batch_size=10, grace=GRACE)

    assert (first.queued, first.broken) == (1, 1)
    assert (second.queued, second.broken) == (0, 0)  # not claimed again
    lease = await store.lease(limit=10, lease_seconds=30)
    assert [e.task_id for e in lease.entries] == [f"{unique}-earth"]
    [mars] = [
        s for s in await store.list_for_user(f"user-{unique}", limit=10) if "mars" in s.task_id
    ]
    assert mars.broken is not None
    assert "Mars/Olympus_Mons" in mars.broken
    assert mars.rule.timezone == "Mars/Olympus_Mons"


def _now() -> datetime:
    return datetime.now(UTC)


async def _audit_events(
    http: httpx.AsyncClient, audit: str, task_id: str, event_type: str
) -> list[object]:
    response = await http.get(
        f"{audit}/audit/events",
        params={"task_id": task_id, "type": event_type},
        headers=bearer("ops", operator=True),
    )
    response.raise_for_status()
    events: list[object] = response.json()["items"]
    return events


MADE_IN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CHANGED_IN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ASKED_IN = "00-5bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"


async def test_each_outbox_row_carries_the_cause_of_its_schedule_or_of_its_trigger(
    replicas: list[PostgresSchedules],
) -> None:
    store = replicas[0]
    due = datetime.now(UTC) - timedelta(seconds=1)
    made = await store.create(
        NewSchedule("cause-made", "u", interval_rule(3600), {}, due, cause=MADE_IN)
    )
    changed = await store.create(NewSchedule("cause-changed", "u", interval_rule(3600), {}, due))

    def unchanged(current: Schedule) -> ScheduleUpdate:
        return ScheduleUpdate(
            rule=current.rule,
            payload=dict(current.payload),
            options=current.options,
            paused=False,
            next_fire_at=current.next_fire_at,
            active=True,
        )

    assert (await store.update(changed.id, unchanged, cause=CHANGED_IN)) is not None
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    await store.enqueue(
        made.id, lambda s: triggered_event(s, due + timedelta(minutes=1)), cause=ASKED_IN
    )

    lease = await store.lease(limit=10, lease_seconds=30)
    causes: dict[str, list[str | None]] = {}
    for entry in lease.entries:
        causes.setdefault(entry.task_id, []).append(entry.cause)
    assert causes == {"cause-made": [MADE_IN, ASKED_IN], "cause-changed": [CHANGED_IN]}
    read_back = await store.get(changed.id)
    assert read_back is not None
    assert read_back.cause == CHANGED_IN
