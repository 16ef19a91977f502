"""Claiming due occurrences into the outbox and relaying the outbox, over in-memory fakes
that behave like the Postgres adapter (a claim commits only when its block ends)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.contextvars import get_contextvars, merge_contextvars
from structlog.testing import capture_logs

from recurring_task_service import firing
from recurring_task_service.firing import (
    RelayPolicy,
    claim_due_occurrences,
    relay_outbox,
    triggered_event,
)
from recurring_task_service.ports import FailedAttempt, OutboxEntry, OutboxLease, PlannedEvent
from recurring_task_service.schedules import (
    MissedRun,
    Rule,
    Schedule,
    ScheduleOptions,
    cron_rule,
    interval_rule,
)
from taskevents.events import TaskEvent
from taskevents.logging import add_trace_context

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)


def schedule(
    task_id: str,
    rule: Rule,
    next_fire_at: datetime,
    payload: dict[str, str] | None = None,
    options: ScheduleOptions | None = None,
    cause: str | None = None,
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
        cause=cause,
    )


@dataclass
class FakeClaim:
    now: datetime
    schedules: Sequence[Schedule]
    settled: list[tuple[Schedule, list[PlannedEvent], list[MissedRun], datetime | None, bool]] = (
        field(default_factory=list)
    )
    broken_count: int = 0

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
class FakeLease:
    entries: Sequence[OutboxEntry]


class FakeStore:
    """Schedules, outbox and missed runs in memory."""

    def __init__(self, schedules: list[Schedule], *, now: datetime = NOW) -> None:
        self.by_id = {s.id: s for s in schedules}
        self.now = now
        self.outbox: dict[int, OutboxEntry] = {}
        self.missed: list[MissedRun] = []
        self.crash_before_commit = False
        self.parked: dict[int, str] = {}
        self.retry_at: dict[int, datetime] = {}

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
        claim.broken_count = 0
        yield claim
        if self.crash_before_commit:
            raise ConnectionResetError("the replica died before the commit")
        for claimed, events, missed, next_fire_at, finished in claim.settled:
            for planned in events:
                entry_id = len(self.outbox) + 1 + max(self.outbox, default=0)
                self.outbox[entry_id] = OutboxEntry(
                    entry_id,
                    planned.event,
                    planned.due_at,
                    planned.event.task_id,
                    cause=planned.cause,
                )
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

    async def lease(self, *, limit: int, lease_seconds: float) -> FakeLease:
        """Like the adapter: waiting rows in order; none behind a row of its task that
        waits for its retry (a parked one holds nothing up)."""
        waiting: list[OutboxEntry] = []
        blocked: set[str] = set()
        for entry_id in sorted(self.outbox):
            entry = self.outbox[entry_id]
            if entry_id in self.parked or entry.task_id in blocked:
                continue
            if self.retry_at.get(entry_id, self.now) > self.now:
                blocked.add(entry.task_id)
                continue
            waiting.append(entry)
        return FakeLease(waiting[:limit])

    async def settle(
        self,
        lease: OutboxLease,
        *,
        published: Sequence[int],
        failed: Sequence[FailedAttempt],
        released: Sequence[int],
    ) -> None:
        for entry_id in published:
            del self.outbox[entry_id]
        for attempt in failed:
            entry = self.outbox[attempt.entry_id]
            self.outbox[attempt.entry_id] = replace(entry, attempts=entry.attempts + 1)
            if attempt.retry_at is None:
                self.parked[attempt.entry_id] = attempt.error
            else:
                self.retry_at[attempt.entry_id] = attempt.retry_at


class RecordingPublisher:
    def __init__(self, *, failing_tasks: set[str] | None = None) -> None:
        self.published: list[TaskEvent] = []
        self.failing_tasks = failing_tasks or set()
        self.causes: dict[str, str | None] = {}  # event id: the cause its publish links to
        # event id: what the log lines written during its publish are bound to
        self.logged_with: dict[str, dict[str, Any]] = {}

    async def publish(self, event: TaskEvent, *, cause: str | None = None) -> None:
        self.logged_with[event.event_id] = get_contextvars()
        if event.task_id in self.failing_tasks:
            raise ConnectionError("sidecar unavailable")
        self.published.append(event)
        self.causes[event.event_id] = cause


def occurrence(entry: OutboxEntry) -> str:
    assert entry.event is not None
    return str(entry.event.payload["occurrence"])


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
    assert [e.task_id for e in store.outbox.values()] == ["due"]

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
    assert sorted(occurrence(e) for e in store.outbox.values()) == [
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]

    publisher.failing_tasks.clear()
    store.now += timedelta(seconds=1)  # its back-off
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


POLICY = RelayPolicy(
    max_attempts=3, first_backoff=timedelta(seconds=1), max_backoff=timedelta(seconds=4)
)


async def relay_at(store: FakeStore, publisher: RecordingPublisher, at: datetime) -> None:
    store.now = at
    await relay_outbox(store, publisher, batch_size=10, clock=lambda: at, policy=POLICY)


async def test_an_event_that_keeps_failing_backs_off_then_is_parked_with_its_reason() -> None:
    store = FakeStore(
        [
            schedule("poison", interval_rule(3600), NOW - timedelta(seconds=2)),
            schedule("fine", interval_rule(3600), NOW),
        ]
    )
    publisher = RecordingPublisher(failing_tasks={"poison"})
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    [poison_id] = [i for i, e in store.outbox.items() if e.task_id == "poison"]

    await relay_at(store, publisher, NOW)
    # Within its back-off the failing event is not taken again, so it is not the head of
    # every batch; the others went out meanwhile.
    assert store.retry_at[poison_id] == NOW + timedelta(seconds=1)
    assert [e.task_id for e in publisher.published] == ["fine"]
    await relay_at(store, publisher, NOW + timedelta(milliseconds=500))
    assert store.outbox[poison_id].attempts == 1

    await relay_at(store, publisher, NOW + timedelta(seconds=1))
    assert store.retry_at[poison_id] == NOW + timedelta(seconds=3)  # doubled
    await relay_at(store, publisher, NOW + timedelta(seconds=3))

    assert store.outbox[poison_id].attempts == 3
    assert (
        store.parked[poison_id] == "gave up after 3 attempts: ConnectionError: sidecar unavailable"
    )
    await relay_at(store, publisher, NOW + timedelta(hours=1))
    assert store.outbox[poison_id].attempts == 3  # parked: never tried again


async def test_a_parked_event_does_not_hold_up_the_later_events_of_its_task() -> None:
    store = FakeStore([schedule("task-1", interval_rule(60), NOW - timedelta(minutes=1))])
    publisher = RecordingPublisher()
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    first, second = sorted(store.outbox)
    store.outbox[first] = replace(store.outbox[first], event=None, unreadable="not JSON")

    relayed = await relay_outbox(store, publisher, batch_size=10, clock=lambda: NOW)

    assert store.parked == {first: "unreadable outbox row: not JSON"}  # at once
    assert [(r.parked, r.error) for r in relayed] == [
        (True, "unreadable outbox row: not JSON"),
        (False, None),  # waited for the one before it, no attempt counted
    ]
    await relay_outbox(store, publisher, batch_size=10, clock=lambda: NOW)
    assert [e.payload["occurrence"] for e in publisher.published] == ["2026-03-01T12:00:00Z"]
    assert list(store.outbox) == [first]
    assert second not in store.outbox


def test_the_back_off_doubles_up_to_its_cap_and_the_attempts_are_bounded() -> None:
    policy = RelayPolicy(
        max_attempts=5, first_backoff=timedelta(seconds=1), max_backoff=timedelta(seconds=4)
    )

    assert [policy.retry_at(n, NOW) for n in range(1, 6)] == [
        NOW + timedelta(seconds=1),
        NOW + timedelta(seconds=2),
        NOW + timedelta(seconds=4),
        NOW + timedelta(seconds=4),
        None,
    ]


CREATED_IN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_each_triggered_event_is_published_linked_to_what_set_its_schedule() -> None:
    store = FakeStore(
        [
            schedule("caused", interval_rule(60), NOW - timedelta(seconds=61), cause=CREATED_IN),
            schedule("older", interval_rule(60), NOW),  # set before causes were kept
        ]
    )
    publisher = RecordingPublisher()

    await fire(store, publisher)

    by_task: dict[str, list[str | None]] = {}
    for event in publisher.published:
        by_task.setdefault(event.task_id, []).append(publisher.causes[event.event_id])
    assert by_task == {"caused": [CREATED_IN, CREATED_IN], "older": [None]}


async def test_the_relay_logs_each_event_with_its_ids_and_the_relay_trace(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FakeStore(
        [schedule("fails", interval_rule(60), NOW), schedule("works", interval_rule(60), NOW)]
    )
    publisher = RecordingPublisher(failing_tasks={"fails"})
    await claim_due_occurrences(store, batch_size=10, grace=GRACE)
    event_ids = {e.task_id: e.event.event_id for e in store.outbox.values() if e.event}

    with capture_logs(processors=[merge_contextvars, add_trace_context]) as lines:
        # A logger made under the capture: one cached before it would log past it.
        monkeypatch.setattr(firing, "log", structlog.stdlib.get_logger(firing.__name__))
        await relay_outbox(store, publisher, batch_size=10, clock=lambda: NOW)

    # While each event is published (the publisher's own lines), it is bound.
    for task_id, event_id in event_ids.items():
        bound = publisher.logged_with[event_id]
        assert (bound["event_id"], bound["task_id"]) == (event_id, task_id)
    # The failure's line names its event, in the relay's trace.
    (relay,) = [s for s in spans.get_finished_spans() if s.name == "outbox relay"]
    assert relay.context is not None
    (failure,) = [line for line in lines if line["log_level"] == "warning"]
    assert failure["event_id"] == event_ids["fails"]
    assert failure["task_id"] == "fails"
    assert failure["trace_id"] == f"{relay.context.trace_id:032x}"
    assert failure["span_id"] == f"{relay.context.span_id:016x}"
    assert get_contextvars().get("event_id") is None  # nothing stays bound after the relay
