"""Claiming due occurrences into the outbox and relaying the outbox, over in-memory fakes
that behave like the Postgres adapter (a claim commits only when its block ends)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from recurring_task_service.firing import (
    claim_due_occurrences,
    relay_outbox,
    triggered_event,
)
from recurring_task_service.ports import OutboxEntry, PlannedEvent
from recurring_task_service.schedules import (
    MissedRun,
    Rule,
    Schedule,
    ScheduleOptions,
    cron_rule,
    interval_rule,
)
from taskevents.events import TaskEvent

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)


def schedule(
    task_id: str,
    rule: Rule,
    next_fire_at: datetime,
    payload: dict[str, str] | None = None,
    options: ScheduleOptions | None = None,
) -> Schedule:
    return Schedule(
        id=uuid.uuid5(uuid.NAMESPACE_URL, task_id),
        task_id=task_id,
        user_id="user-1",
        rule=rule,
        payload=payload or {},
        next_fire_at=next_fire_at,
        last_fired_at=None,
        fire_count=0,
        active=True,
        created_at=NOW - timedelta(days=1),
        updated_at=NOW - timedelta(days=1),
        options=options or ScheduleOptions(),
    )


@dataclass
class FakeClaim:
    now: datetime
    schedules: Sequence[Schedule]
    settled: list[tuple[Schedule, list[PlannedEvent], list[MissedRun], datetime | None, bool]] = (
        field(default_factory=list)
    )

    def settle(
        self,
        schedule: Schedule,
        *,
        events: Sequence[PlannedEvent],
        missed: Sequence[MissedRun],
        next_fire_at: datetime | None,
        finished: bool,
    ) -> None:
        self.settled.append((schedule, list(events), list(missed), next_fire_at, finished))


@dataclass
class FakeBatch:
    entries: Sequence[OutboxEntry]
    done: list[int] = field(default_factory=list)

    def published(self, entry: OutboxEntry) -> None:
        self.done.append(entry.id)


class FakeStore:
    """Schedules, outbox and missed runs in memory."""

    def __init__(self, schedules: list[Schedule], *, now: datetime = NOW) -> None:
        self.by_id = {s.id: s for s in schedules}
        self.now = now
        self.outbox: dict[int, OutboxEntry] = {}
        self.missed: list[MissedRun] = []
        self.crash_before_commit = False

    @asynccontextmanager
    async def claim_due(self, *, limit: int) -> AsyncIterator[FakeClaim]:
        due = sorted(
            (
                s
                for s in self.by_id.values()
                if s.active and not s.paused and s.next_fire_at and s.next_fire_at <= self.now
            ),
            key=lambda s: s.next_fire_at or self.now,
        )[:limit]
        claim = FakeClaim(self.now, due)
        yield claim
        if self.crash_before_commit:
            raise ConnectionResetError("the replica died before the commit")
        for claimed, events, missed, next_fire_at, finished in claim.settled:
            for planned in events:
                entry_id = len(self.outbox) + 1 + max(self.outbox, default=0)
                self.outbox[entry_id] = OutboxEntry(entry_id, planned.event, planned.due_at)
            self.missed.extend(missed)
            self.by_id[claimed.id] = replace(
                claimed,
                next_fire_at=next_fire_at,
                active=not finished,
                fire_count=claimed.fire_count + len(events),
            )

    async def next_fire_at(self) -> datetime | None:
        return min(
            (s.next_fire_at for s in self.by_id.values() if s.active and s.next_fire_at),
            default=None,
        )

    @asynccontextmanager
    async def take(self, *, limit: int) -> AsyncIterator[FakeBatch]:
        batch = FakeBatch([self.outbox[i] for i in sorted(self.outbox)[:limit]])
        yield batch
        for entry_id in batch.done:
            del self.outbox[entry_id]


class RecordingPublisher:
    def __init__(self, *, failing_tasks: set[str] | None = None) -> None:
        self.published: list[TaskEvent] = []
        self.failing_tasks = failing_tasks or set()

    async def publish(self, event: TaskEvent) -> None:
        if event.task_id in self.failing_tasks:
            raise ConnectionError("sidecar unavailable")
        self.published.append(event)


async def fire(store: FakeStore, publisher: RecordingPublisher) -> None:
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    await relay_outbox(store, publisher, batch_size=10, clock=lambda: store.now)


def test_the_triggered_event_carries_the_template_and_the_occurrence() -> None:
    s = schedule("task-1", cron_rule("0 9 * * *"), NOW, payload={"title": "Water plants"})

    event = triggered_event(s, NOW)

    assert event.type == "task.recurring.triggered"
    assert event.task_id == "task-1"
    assert event.user_id == "user-1"
    assert event.timestamp == NOW
    assert event.payload == {
        "title": "Water plants",
        "schedule_id": str(s.id),
        "occurrence": "2026-03-01T12:00:00Z",
    }


def test_the_triggered_event_is_the_same_however_often_it_is_built() -> None:
    s = schedule("task-1", interval_rule(2), NOW)

    assert triggered_event(s, NOW).to_json() == triggered_event(s, NOW).to_json()
    assert (
        triggered_event(s, NOW).event_id != triggered_event(s, NOW + timedelta(seconds=2)).event_id
    )


async def test_due_schedules_go_through_the_outbox_once_and_advance() -> None:
    store = FakeStore(
        [
            schedule("due", interval_rule(60), NOW - timedelta(seconds=1)),
            schedule("later", interval_rule(60), NOW + timedelta(seconds=30)),
        ]
    )
    publisher = RecordingPublisher()

    report = await claim_due_occurrences(store, batch_size=10, grace=GRACE)

    assert report.queued == 1
    assert publisher.published == []  # nothing is published inside the claim
    assert [e.event.task_id for e in store.outbox.values()] == ["due"]

    relayed = await relay_outbox(store, publisher, batch_size=10, clock=lambda: NOW)

    assert [e.task_id for e in publisher.published] == ["due"]
    assert store.outbox == {}
    assert relayed[0].lateness == timedelta(seconds=1)
    advanced = store.by_id[uuid.uuid5(uuid.NAMESPACE_URL, "due")]
    assert advanced.next_fire_at == NOW + timedelta(seconds=59)
    assert advanced.fire_count == 1


async def test_a_second_tick_publishes_nothing_new() -> None:
    store = FakeStore([schedule("due", interval_rule(60), NOW)])
    publisher = RecordingPublisher()

    await fire(store, publisher)
    await fire(store, publisher)

    assert len(publisher.published) == 1


async def test_a_crash_before_the_claim_commits_leaves_the_occurrence_due() -> None:
    store = FakeStore([schedule("task-1", interval_rule(60), NOW)])
    store.crash_before_commit = True
    publisher = RecordingPublisher()

    with suppress(ConnectionResetError):
        await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    store.crash_before_commit = False
    await fire(store, publisher)

    assert [e.payload["occurrence"] for e in publisher.published] == ["2026-03-01T12:00:00Z"]


async def test_a_crash_after_the_claim_leaves_the_event_in_the_outbox_for_any_replica() -> None:
    store = FakeStore([schedule("task-1", interval_rule(60), NOW)])
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    # The replica that claimed dies here; another one relays.
    other_replica = RecordingPublisher()

    await fire(store, other_replica)

    assert [e.payload["occurrence"] for e in other_replica.published] == ["2026-03-01T12:00:00Z"]
    assert store.outbox == {}


async def test_missed_occurrences_within_the_grace_period_are_caught_up_in_order() -> None:
    store = FakeStore([schedule("task-1", interval_rule(60), NOW - timedelta(minutes=3))])
    publisher = RecordingPublisher()

    await fire(store, publisher)

    assert [e.payload["occurrence"] for e in publisher.published] == [
        "2026-03-01T11:57:00Z",
        "2026-03-01T11:58:00Z",
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]


async def test_occurrences_missed_beyond_the_grace_period_are_skipped_and_recorded() -> None:
    store = FakeStore([schedule("task-1", interval_rule(60), NOW - timedelta(hours=2))])
    publisher = RecordingPublisher()

    report = await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    await relay_outbox(store, publisher, batch_size=10)

    assert report.skipped == 115  # 10:00 .. 11:54
    assert [(run.reason.value, run.count) for run in store.missed] == [("beyond_grace", 115)]
    assert [e.payload["occurrence"] for e in publisher.published] == [
        "2026-03-01T11:55:00Z",
        "2026-03-01T11:56:00Z",
        "2026-03-01T11:57:00Z",
        "2026-03-01T11:58:00Z",
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]


async def test_coalescing_publishes_one_event_that_names_the_run() -> None:
    options = ScheduleOptions(coalesce_missed=True)
    store = FakeStore(
        [schedule("task-1", interval_rule(60), NOW - timedelta(minutes=3), options=options)]
    )
    publisher = RecordingPublisher()

    await fire(store, publisher)

    [event] = publisher.published
    assert event.payload["occurrence"] == "2026-03-01T12:00:00Z"
    assert event.payload["coalesced"] == {
        "first_occurrence": "2026-03-01T11:57:00Z",
        "occurrences": 4,
    }
    assert [(run.reason.value, run.count) for run in store.missed] == [("coalesced", 3)]


async def test_a_failed_publish_keeps_the_event_and_the_task_order() -> None:
    store = FakeStore(
        [
            schedule("fails", interval_rule(60), NOW - timedelta(minutes=1)),
            schedule("works", interval_rule(60), NOW),
        ]
    )
    publisher = RecordingPublisher(failing_tasks={"fails"})

    await fire(store, publisher)

    assert [e.task_id for e in publisher.published] == ["works"]
    assert sorted(e.event.payload["occurrence"] for e in store.outbox.values()) == [
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]

    publisher.failing_tasks.clear()
    await fire(store, publisher)

    assert [e.payload["occurrence"] for e in publisher.published if e.task_id == "fails"] == [
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]
    assert store.outbox == {}


async def test_more_due_schedules_than_a_batch_are_claimed_in_several_batches() -> None:
    store = FakeStore([schedule(f"task-{i}", interval_rule(3600), NOW) for i in range(25)])
    publisher = RecordingPublisher()

    await fire(store, publisher)

    assert len(publisher.published) == 25
    assert len({e.event_id for e in publisher.published}) == 25


async def test_a_relay_that_publishes_is_one_span_and_an_empty_tick_none(
    spans: InMemorySpanExporter,
) -> None:
    store = FakeStore([schedule("due", interval_rule(60), NOW - timedelta(seconds=1))])
    await fire(store, RecordingPublisher())
    await relay_outbox(store, RecordingPublisher(), batch_size=10, clock=lambda: NOW)

    relays = [s for s in spans.get_finished_spans() if s.name == "outbox relay"]
    assert len(relays) == 1
    assert relays[0].attributes is not None
    assert relays[0].attributes["taskevents.batch_size"] == 1
