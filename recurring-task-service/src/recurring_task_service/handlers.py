from __future__ import annotations

from datetime import UTC, datetime

from recurring_task_service.ports import (
    StoreRefusedError,
    StoreUnavailableError,
    TaskChange,
    TaskSchedules,
)
from recurring_task_service.schedules import (
    AfterCompletionRule,
    InvalidScheduleError,
    NewSchedule,
    Schedule,
    first_occurrence,
    next_after_completion,
    options_from_recurrence,
    rule_from_recurrence,
)
from taskevents.events import EventType, TaskEvent
from taskevents.status import Outcome

RECURRENCE = "recurrence"


async def sync_task_schedule(
    event: TaskEvent,
    *,
    schedules: TaskSchedules,
    now: datetime | None = None,
    cause: str | None = None,
) -> Outcome:
    """Keep a task's schedule in step with its events: `recurrence` in a task.created or
    task.updated payload sets the schedule (`"recurrence": null` removes it; no key leaves
    it alone), task.deleted removes it, task.completed schedules the next occurrence of an
    "N days after completion" recurrence. Idempotent: a redelivered event sets the same
    schedule again (an unchanged rule keeps its next fire time), and an event older than
    the newest one applied for the task — a replay after a deletion, say — is ignored.
    `cause`, the `traceparent` of this event's handling, is kept with the schedule it sets
    (or advances after a completion): its triggered events link to it."""
    try:
        match event.known_type:
            case EventType.TASK_CREATED | EventType.TASK_UPDATED:
                return await _apply_recurrence(event, schedules, now or datetime.now(UTC), cause)
            case EventType.TASK_DELETED:
                change = await schedules.delete_for_task(event.task_id, event_at=event.timestamp)
                return _outcome(change, applied="schedule removed", nothing="no schedule")
            case EventType.TASK_COMPLETED:
                completed_at = event.timestamp

                def after_completion(schedule: Schedule) -> datetime | None:
                    assert isinstance(schedule.rule, AfterCompletionRule)  # only these
                    return next_after_completion(
                        schedule.rule, completed_at, schedule.options, schedule.fire_count
                    )

                change = await schedules.complete_task(
                    event.task_id, completed_at=completed_at, plan=after_completion, cause=cause
                )
                return _outcome(change, applied="next occurrence scheduled after completion")
            case _:
                return Outcome.success()
    except StoreUnavailableError as error:
        return Outcome.retry(f"schedule store unavailable: {error}")
    except StoreRefusedError as error:
        return Outcome.drop(f"the schedule store refuses this event's values: {error}")


async def _apply_recurrence(
    event: TaskEvent, schedules: TaskSchedules, now: datetime, cause: str | None
) -> Outcome:
    if RECURRENCE not in event.payload:
        return Outcome.success()
    recurrence = event.payload[RECURRENCE]
    if recurrence is None:
        change = await schedules.delete_for_task(event.task_id, event_at=event.timestamp)
        return _outcome(change, applied="recurrence cleared; schedule removed")
    try:
        rule = rule_from_recurrence(recurrence)
        options = options_from_recurrence(recurrence)
    except InvalidScheduleError as error:
        return Outcome.drop(f"invalid recurrence: {error}")
    template = {key: value for key, value in event.payload.items() if key != RECURRENCE}
    change = await schedules.put_for_task(
        NewSchedule(
            task_id=event.task_id,
            user_id=event.user_id,
            rule=rule,
            payload=template,
            next_fire_at=first_occurrence(rule, now, options),
            options=options,
            cause=cause,
        ),
        event_at=event.timestamp,
    )
    return _outcome(change, applied="schedule set")


def _outcome(change: TaskChange, *, applied: str, nothing: str | None = None) -> Outcome:
    match change:
        case TaskChange.APPLIED:
            return Outcome.success(applied)
        case TaskChange.STALE:
            return Outcome.success("older than the task's newest event; ignored")
        case TaskChange.NOTHING:
            return Outcome.success(nothing)
