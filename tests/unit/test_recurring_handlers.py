from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from recurring_task_service.handlers import sync_task_schedule
from recurring_task_service.ports import StoreUnavailableError, TaskChange
from recurring_task_service.schedules import (
    AfterCompletionRule,
    IntervalRule,
    NewSchedule,
    Schedule,
    cron_rule,
    reconcile,
)
from taskevents.events import TaskEvent
from taskevents.status import DaprStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeTaskSchedules:
    """One schedule per task and the newest event time per task, in memory, like the
    Postgres adapter."""

    def __init__(self, *, down: bool = False) -> None:
        self.by_task: dict[str, Schedule] = {}
        self.versions: dict[str, tuple[datetime, bool]] = {}
        self.down = down

    async def put_for_task(self, new: NewSchedule, *, event_at: datetime) -> TaskChange:
        self._check()
        if not self._newest(new.task_id, event_at, deleted=False):
            return TaskChange.STALE
        existing = self.by_task.get(new.task_id)
        next_fire_at, active = reconcile(existing, new) if existing else (new.next_fire_at, True)
        self.by_task[new.task_id] = Schedule(
            id=existing.id if existing else uuid.uuid4(),
            task_id=new.task_id,
            user_id=new.user_id,
            rule=new.rule,
            payload=dict(new.payload),
            next_fire_at=next_fire_at,
            last_fired_at=None,
            fire_count=existing.fire_count if existing else 0,
            active=active,
            created_at=existing.created_at if existing else NOW,
            updated_at=NOW,
            options=new.options,
            cause=new.cause,
        )
        return TaskChange.APPLIED

    async def delete_for_task(self, task_id: str, *, event_at: datetime) -> TaskChange:
        self._check()
        if not self._newest(task_id, event_at, deleted=True):
            return TaskChange.STALE
        found = self.by_task.pop(task_id, None) is not None
        return TaskChange.APPLIED if found else TaskChange.NOTHING

    async def complete_task(
        self,
        task_id: str,
        *,
        completed_at: datetime,
        plan: Callable[[Schedule], datetime | None],
        cause: str | None = None,
    ) -> TaskChange:
        self._check()
        schedule = self.by_task.get(task_id)
        if schedule is None or not isinstance(schedule.rule, AfterCompletionRule):
            return TaskChange.NOTHING
        if schedule.last_completed_at is not None and completed_at <= schedule.last_completed_at:
            return TaskChange.STALE
        next_fire_at = plan(schedule)
        self.by_task[task_id] = replace(
            schedule,
            next_fire_at=next_fire_at,
            last_completed_at=completed_at,
            active=next_fire_at is not None,
            cause=cause,
        )
        return TaskChange.APPLIED

    def _newest(self, task_id: str, event_at: datetime, *, deleted: bool) -> bool:
        known = self.versions.get(task_id)
        if known is not None:
            last, was_deleted = known
            if event_at < last or (event_at == last and was_deleted and not deleted):
                return False
        self.versions[task_id] = (event_at, deleted)
        return True

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("connection refused")


def event(
    type: str,
    payload: dict[str, Any] | None = None,
    task_id: str = "task-1",
    at: datetime | None = None,
) -> TaskEvent:
    return TaskEvent.create(type, task_id=task_id, user_id="user-1", payload=payload, timestamp=at)


async def test_task_created_with_a_cron_recurrence_creates_the_schedule() -> None:
    store = FakeTaskSchedules()
    recurrence = {"cron": "0 9 1 * *", "timezone": "Europe/Berlin"}

    outcome = await sync_task_schedule(
        event("task.created", {"title": "Pay rent", "recurrence": recurrence}),
        schedules=store,
        now=NOW,
    )

    assert outcome.status is DaprStatus.SUCCESS
    schedule = store.by_task["task-1"]
    assert schedule.rule == cron_rule("0 9 1 * *", "Europe/Berlin")
    assert schedule.user_id == "user-1"
    assert schedule.next_fire_at == datetime(2026, 4, 1, 7, 0, tzinfo=UTC)  # 09:00 CEST
    assert schedule.payload == {"title": "Pay rent"}  # the template leaves recurrence out


async def test_task_updated_with_an_interval_replaces_the_rule() -> None:
    store = FakeTaskSchedules()
    await sync_task_schedule(
        event("task.created", {"recurrence": {"cron": "0 9 * * *"}}), schedules=store, now=NOW
    )

    outcome = await sync_task_schedule(
        event("task.updated", {"recurrence": {"interval_seconds": 30}}), schedules=store, now=NOW
    )

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task["task-1"].rule == IntervalRule(30, "UTC")
    assert store.by_task["task-1"].next_fire_at == datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)


async def test_a_redelivered_event_keeps_the_next_fire_time() -> None:
    store = FakeTaskSchedules()
    created = event("task.created", {"recurrence": {"interval_seconds": 60}})
    await sync_task_schedule(created, schedules=store, now=NOW)
    first = store.by_task["task-1"]

    outcome = await sync_task_schedule(created, schedules=store, now=NOW + timedelta(seconds=30))

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task["task-1"].next_fire_at == first.next_fire_at
    assert store.by_task["task-1"].id == first.id


async def test_task_deleted_removes_the_schedule() -> None:
    store = FakeTaskSchedules()
    await sync_task_schedule(
        event("task.created", {"recurrence": {"interval_seconds": 60}}), schedules=store, now=NOW
    )

    outcome = await sync_task_schedule(event("task.deleted"), schedules=store, now=NOW)

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task == {}


async def test_task_deleted_without_a_schedule_succeeds() -> None:
    outcome = await sync_task_schedule(
        event("task.deleted"), schedules=FakeTaskSchedules(), now=NOW
    )

    assert outcome.status is DaprStatus.SUCCESS


async def test_recurrence_null_removes_the_schedule() -> None:
    store = FakeTaskSchedules()
    await sync_task_schedule(
        event("task.created", {"recurrence": {"interval_seconds": 60}}), schedules=store, now=NOW
    )

    outcome = await sync_task_schedule(
        event("task.updated", {"recurrence": None}), schedules=store, now=NOW
    )

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task == {}


async def test_an_update_without_recurrence_leaves_the_schedule_alone() -> None:
    store = FakeTaskSchedules()
    await sync_task_schedule(
        event("task.created", {"recurrence": {"interval_seconds": 60}}), schedules=store, now=NOW
    )
    before = store.by_task["task-1"]

    outcome = await sync_task_schedule(
        event("task.updated", {"title": "renamed"}), schedules=store, now=NOW
    )

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task["task-1"] == before


async def test_an_invalid_recurrence_is_dropped_with_the_reason() -> None:
    store = FakeTaskSchedules()

    outcome = await sync_task_schedule(
        event("task.created", {"recurrence": {"cron": "0 25 * * *"}}), schedules=store, now=NOW
    )

    assert outcome.status is DaprStatus.DROP
    assert outcome.reason is not None
    assert "invalid recurrence" in outcome.reason
    assert "0 25 * * *" in outcome.reason
    assert store.by_task == {}


async def test_an_unknown_time_zone_is_dropped() -> None:
    outcome = await sync_task_schedule(
        event("task.created", {"recurrence": {"cron": "0 9 * * *", "timezone": "Atlantis"}}),
        schedules=FakeTaskSchedules(),
        now=NOW,
    )

    assert outcome.status is DaprStatus.DROP
    assert outcome.reason is not None
    assert "unknown time zone" in outcome.reason


async def test_database_down_asks_for_a_retry() -> None:
    outcome = await sync_task_schedule(
        event("task.created", {"recurrence": {"interval_seconds": 60}}),
        schedules=FakeTaskSchedules(down=True),
        now=NOW,
    )

    assert outcome.status is DaprStatus.RETRY


async def test_other_event_types_succeed_and_change_nothing() -> None:
    store = FakeTaskSchedules(down=True)  # not touched, so not a retry

    for type in ("task.recurring.triggered", "task.archived"):
        outcome = await sync_task_schedule(
            event(type, {"recurrence": {"interval_seconds": 60}}), schedules=store, now=NOW
        )
        assert outcome.status is DaprStatus.SUCCESS, type


async def test_a_replayed_older_event_does_not_recreate_a_deleted_schedule() -> None:
    store = FakeTaskSchedules()
    created = event("task.created", {"recurrence": {"interval_seconds": 60}}, at=NOW)
    await sync_task_schedule(created, schedules=store, now=NOW)
    await sync_task_schedule(
        event("task.deleted", at=NOW + timedelta(minutes=1)), schedules=store, now=NOW
    )

    replayed = await sync_task_schedule(created, schedules=store, now=NOW + timedelta(minutes=2))
    older_update = await sync_task_schedule(
        event(
            "task.updated", {"recurrence": {"interval_seconds": 5}}, at=NOW + timedelta(seconds=30)
        ),
        schedules=store,
        now=NOW + timedelta(minutes=2),
    )

    assert replayed.status is DaprStatus.SUCCESS
    assert replayed.reason is not None
    assert "ignored" in replayed.reason
    assert older_update.status is DaprStatus.SUCCESS
    assert store.by_task == {}


async def test_an_older_update_does_not_undo_a_newer_one() -> None:
    store = FakeTaskSchedules()
    newer = event("task.updated", {"recurrence": {"interval_seconds": 30}}, at=NOW)
    older = event("task.updated", {"recurrence": {"interval_seconds": 90}}, at=NOW - timedelta(1))

    await sync_task_schedule(newer, schedules=store, now=NOW)
    await sync_task_schedule(older, schedules=store, now=NOW)

    assert store.by_task["task-1"].rule == IntervalRule(30, "UTC")


async def test_completion_schedules_the_next_occurrence_n_days_later() -> None:
    store = FakeTaskSchedules()
    await sync_task_schedule(
        event("task.created", {"title": "Water", "recurrence": {"after_completion_days": 3}}),
        schedules=store,
        now=NOW,
    )
    assert store.by_task["task-1"].next_fire_at is None  # waits for a completion

    completed = event("task.completed", at=NOW + timedelta(hours=5))
    outcome = await sync_task_schedule(completed, schedules=store, now=NOW)

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task["task-1"].next_fire_at == NOW + timedelta(days=3, hours=5)

    # A redelivery, or an older completion, changes nothing.
    await sync_task_schedule(completed, schedules=store, now=NOW)
    await sync_task_schedule(event("task.completed", at=NOW), schedules=store, now=NOW)
    assert store.by_task["task-1"].next_fire_at == NOW + timedelta(days=3, hours=5)


CREATED_IN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
COMPLETED_IN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_schedule_keeps_the_trace_of_the_event_that_last_set_it() -> None:
    store = FakeTaskSchedules()
    recurrence = {"after_completion_days": 1}

    await sync_task_schedule(
        event("task.created", {"recurrence": recurrence}),
        schedules=store,
        now=NOW,
        cause=CREATED_IN,
    )
    assert store.by_task["task-1"].cause == CREATED_IN

    # The completion sets the next occurrence: it is that occurrence's cause.
    completed = event("task.completed", at=NOW + timedelta(hours=1))
    await sync_task_schedule(completed, schedules=store, now=NOW, cause=COMPLETED_IN)
    assert store.by_task["task-1"].cause == COMPLETED_IN


async def test_completion_of_a_task_without_a_completion_schedule_changes_nothing() -> None:
    store = FakeTaskSchedules()
    await sync_task_schedule(
        event("task.created", {"recurrence": {"interval_seconds": 60}}), schedules=store, now=NOW
    )
    before = store.by_task["task-1"]

    outcome = await sync_task_schedule(event("task.completed"), schedules=store, now=NOW)

    assert outcome.status is DaprStatus.SUCCESS
    assert store.by_task["task-1"] == before
