from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from recurring_task_service.handlers import sync_task_schedule
from recurring_task_service.ports import StoreUnavailableError
from recurring_task_service.schedules import IntervalRule, NewSchedule, Schedule, cron_rule
from taskevents.events import TaskEvent
from taskevents.status import DaprStatus

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeTaskSchedules:
    """One schedule per task, in memory, like the Postgres adapter."""

    def __init__(self, *, down: bool = False) -> None:
        self.by_task: dict[str, Schedule] = {}
        self.down = down

    async def put_for_task(self, new: NewSchedule) -> Schedule:
        self._check()
        existing = self.by_task.get(new.task_id)
        next_fire_at = new.next_fire_at
        if existing is not None and existing.rule == new.rule:
            next_fire_at = existing.next_fire_at
        schedule = Schedule(
            id=existing.id if existing else uuid.uuid4(),
            task_id=new.task_id,
            user_id=new.user_id,
            rule=new.rule,
            payload=dict(new.payload),
            next_fire_at=next_fire_at,
            last_fired_at=None,
            fire_count=0,
            active=True,
            created_at=existing.created_at if existing else NOW,
            updated_at=NOW,
        )
        self.by_task[new.task_id] = schedule
        return schedule

    async def delete_for_task(self, task_id: str) -> bool:
        self._check()
        return self.by_task.pop(task_id, None) is not None

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("connection refused")


def event(type: str, payload: dict[str, Any] | None = None, task_id: str = "task-1") -> TaskEvent:
    return TaskEvent.create(type, task_id=task_id, user_id="user-1", payload=payload)


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

    for type in ("task.completed", "task.recurring.triggered", "task.archived"):
        outcome = await sync_task_schedule(
            event(type, {"recurrence": {"interval_seconds": 60}}), schedules=store, now=NOW
        )
        assert outcome.status is DaprStatus.SUCCESS, type
