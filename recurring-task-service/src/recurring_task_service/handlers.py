from __future__ import annotations

from datetime import UTC, datetime

from recurring_task_service.ports import StoreUnavailableError, TaskSchedules
from recurring_task_service.schedules import (
    InvalidScheduleError,
    NewSchedule,
    first_occurrence,
    rule_from_recurrence,
)
from taskevents.events import EventType, TaskEvent
from taskevents.status import Outcome

RECURRENCE = "recurrence"


async def sync_task_schedule(
    event: TaskEvent, *, schedules: TaskSchedules, now: datetime | None = None
) -> Outcome:
    """Keep a task's schedule in step with its events: `recurrence` in a task.created or
    task.updated payload sets the schedule (`"recurrence": null` removes it; no key leaves
    it alone), task.deleted removes it. Idempotent: a redelivered event sets the same
    schedule again, and an unchanged rule keeps its next fire time."""
    try:
        match event.known_type:
            case EventType.TASK_CREATED | EventType.TASK_UPDATED:
                return await _apply_recurrence(event, schedules, now or datetime.now(UTC))
            case EventType.TASK_DELETED:
                removed = await schedules.delete_for_task(event.task_id)
                return Outcome.success("schedule removed" if removed else "no schedule")
            case _:
                return Outcome.success()
    except StoreUnavailableError as error:
        return Outcome.retry(f"schedule store unavailable: {error}")


async def _apply_recurrence(event: TaskEvent, schedules: TaskSchedules, now: datetime) -> Outcome:
    if RECURRENCE not in event.payload:
        return Outcome.success()
    recurrence = event.payload[RECURRENCE]
    if recurrence is None:
        removed = await schedules.delete_for_task(event.task_id)
        return Outcome.success("recurrence cleared; schedule removed" if removed else None)
    try:
        rule = rule_from_recurrence(recurrence)
    except InvalidScheduleError as error:
        return Outcome.drop(f"invalid recurrence: {error}")
    template = {key: value for key, value in event.payload.items() if key != RECURRENCE}
    schedule = await schedules.put_for_task(
        NewSchedule(
            task_id=event.task_id,
            user_id=event.user_id,
            rule=rule,
            payload=template,
            next_fire_at=first_occurrence(rule, now),
        )
    )
    return Outcome.success(f"schedule {schedule.id} set; next at {schedule.next_fire_at}")
