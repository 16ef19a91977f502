from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from recurring_task_service.firing import (
    OccurrenceResult,
    fire_due_schedules,
    triggered_event,
)
from recurring_task_service.schedules import Rule, Schedule, cron_rule, interval_rule
from taskevents.events import TaskEvent

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
GRACE = timedelta(minutes=5)


def schedule(
    task_id: str, rule: Rule, next_fire_at: datetime, payload: dict[str, str] | None = None
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
    )


@dataclass
class FakeClaim:
    now: datetime
    schedules: Sequence[Schedule]
    advances: list[tuple[Schedule, datetime | None, datetime | None]] = field(default_factory=list)

    def advance(
        self, schedule: Schedule, *, next_fire_at: datetime | None, fired_at: datetime | None
    ) -> None:
        self.advances.append((schedule, next_fire_at, fired_at))


class FakeDueSchedules:
    """Schedules in memory; a claim takes the due ones, the commit applies the advances."""

    def __init__(self, schedules: list[Schedule], *, now: datetime = NOW) -> None:
        self.by_id = {s.id: s for s in schedules}
        self.now = now
        self.claims = 0

    @asynccontextmanager
    async def claim_due(self, *, limit: int) -> AsyncIterator[FakeClaim]:
        self.claims += 1
        due = sorted(
            (s for s in self.by_id.values() if s.active and s.next_fire_at <= self.now),
            key=lambda s: s.next_fire_at,
        )[:limit]
        claim = FakeClaim(self.now, due)
        yield claim
        for claimed, next_fire_at, fired_at in claim.advances:
            self.by_id[claimed.id] = replace(
                claimed,
                next_fire_at=next_fire_at or claimed.next_fire_at,
                active=next_fire_at is not None,
                last_fired_at=fired_at or claimed.last_fired_at,
                fire_count=claimed.fire_count + (fired_at is not None),
            )

    async def next_fire_at(self) -> datetime | None:
        return min((s.next_fire_at for s in self.by_id.values() if s.active), default=None)


class RecordingPublisher:
    def __init__(self, *, failing_tasks: set[str] | None = None) -> None:
        self.published: list[TaskEvent] = []
        self.failing_tasks = failing_tasks or set()

    async def publish(self, event: TaskEvent) -> None:
        if event.task_id in self.failing_tasks:
            raise ConnectionError("sidecar unavailable")
        self.published.append(event)


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


async def test_due_schedules_are_published_once_and_advanced() -> None:
    due = FakeDueSchedules(
        [
            schedule("due", interval_rule(60), NOW - timedelta(seconds=1)),
            schedule("later", interval_rule(60), NOW + timedelta(seconds=30)),
        ]
    )
    publisher = RecordingPublisher()

    fired = await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    assert [e.task_id for e in publisher.published] == ["due"]
    assert [f.result for f in fired] == [OccurrenceResult.PUBLISHED]
    advanced = due.by_id[uuid.uuid5(uuid.NAMESPACE_URL, "due")]
    assert advanced.next_fire_at == NOW + timedelta(seconds=59)
    assert advanced.fire_count == 1
    assert advanced.last_fired_at == NOW


async def test_a_second_tick_publishes_nothing_new() -> None:
    due = FakeDueSchedules([schedule("due", interval_rule(60), NOW)])
    publisher = RecordingPublisher()

    await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)
    await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    assert len(publisher.published) == 1


async def test_missed_occurrences_within_the_grace_period_are_caught_up_in_order() -> None:
    due = FakeDueSchedules([schedule("task-1", interval_rule(60), NOW - timedelta(minutes=3))])
    publisher = RecordingPublisher()

    await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    assert [e.payload["occurrence"] for e in publisher.published] == [
        "2026-03-01T11:57:00Z",
        "2026-03-01T11:58:00Z",
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]


async def test_occurrences_missed_beyond_the_grace_period_are_skipped() -> None:
    due = FakeDueSchedules([schedule("task-1", interval_rule(60), NOW - timedelta(hours=2))])
    publisher = RecordingPublisher()

    fired = await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    assert fired[0].result is OccurrenceResult.SKIPPED
    # Then the occurrences of the last five minutes are published.
    assert [e.payload["occurrence"] for e in publisher.published] == [
        "2026-03-01T11:56:00Z",
        "2026-03-01T11:57:00Z",
        "2026-03-01T11:58:00Z",
        "2026-03-01T11:59:00Z",
        "2026-03-01T12:00:00Z",
    ]


async def test_a_failed_publish_leaves_the_occurrence_due_and_the_others_advance() -> None:
    due = FakeDueSchedules(
        [
            schedule("fails", interval_rule(60), NOW),
            schedule("works", interval_rule(60), NOW),
        ]
    )
    publisher = RecordingPublisher(failing_tasks={"fails"})

    fired = await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    results = {f.task_id: f.result for f in fired}
    assert results == {"fails": OccurrenceResult.FAILED, "works": OccurrenceResult.PUBLISHED}
    failed = due.by_id[uuid.uuid5(uuid.NAMESPACE_URL, "fails")]
    assert failed.next_fire_at == NOW
    assert failed.fire_count == 0

    publisher.failing_tasks.clear()
    await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    assert sorted(e.task_id for e in publisher.published) == ["fails", "works"]


async def test_when_every_publish_fails_the_tick_gives_up() -> None:
    due = FakeDueSchedules([schedule("fails", interval_rule(60), NOW)])

    fired = await fire_due_schedules(
        due, RecordingPublisher(failing_tasks={"fails"}), batch_size=10, grace=GRACE
    )

    assert [f.result for f in fired] == [OccurrenceResult.FAILED]
    assert due.claims == 1


async def test_more_due_schedules_than_a_batch_are_claimed_in_several_batches() -> None:
    due = FakeDueSchedules([schedule(f"task-{i}", interval_rule(3600), NOW) for i in range(25)])
    publisher = RecordingPublisher()

    await fire_due_schedules(due, publisher, batch_size=10, grace=GRACE)

    assert len(publisher.published) == 25
    assert len({e.event_id for e in publisher.published}) == 25
