"""Publishing the occurrences that are due: one `task.recurring.triggered` per occurrence,
claimed in a transaction so that among several replicas one publishes it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from recurring_task_service.ports import ClaimedSchedules, DueSchedules, Publisher
from recurring_task_service.schedules import (
    DueOccurrence,
    Schedule,
    occurrence_event_id,
    occurrence_iso,
    plan_due_occurrence,
)
from taskevents.events import EventType, TaskEvent
from taskevents.logging import get_logger

log = get_logger(__name__)

# Rounds of claiming in one tick, so catching up after an outage cannot run forever.
MAX_CLAIM_ROUNDS_PER_TICK = 50


class OccurrenceResult(StrEnum):
    PUBLISHED = "published"
    SKIPPED = "skipped"  # missed by more than the grace period
    FAILED = "failed"  # publishing failed; claimed again on a later tick


@dataclass(frozen=True, slots=True)
class FiredOccurrence:
    schedule_id: str
    task_id: str
    occurrence: datetime
    result: OccurrenceResult
    lateness: timedelta  # when it was handled minus when it was due


def triggered_event(schedule: Schedule, occurrence: datetime) -> TaskEvent:
    """The event of one occurrence; the same bytes however often it is built."""
    payload: Mapping[str, Any] = {
        **schedule.payload,
        "schedule_id": str(schedule.id),
        "occurrence": occurrence_iso(occurrence),
    }
    return TaskEvent.create(
        EventType.TASK_RECURRING_TRIGGERED,
        task_id=schedule.task_id,
        user_id=schedule.user_id,
        payload=payload,
        event_id=occurrence_event_id(schedule.id, occurrence),
        timestamp=occurrence,
    )


async def fire_due_schedules(
    due: DueSchedules,
    publisher: Publisher,
    *,
    batch_size: int,
    grace: timedelta,
) -> list[FiredOccurrence]:
    """Publish every occurrence due now, in batches; stop early when a batch makes no
    progress (publishing fails), leaving the rest to the next tick."""
    fired: list[FiredOccurrence] = []
    for _ in range(MAX_CLAIM_ROUNDS_PER_TICK):
        batch = await fire_one_batch(due, publisher, batch_size=batch_size, grace=grace)
        fired.extend(batch)
        progressed = any(f.result is not OccurrenceResult.FAILED for f in batch)
        if not batch or not progressed:
            break
    return fired


async def fire_one_batch(
    due: DueSchedules,
    publisher: Publisher,
    *,
    batch_size: int,
    grace: timedelta,
) -> list[FiredOccurrence]:
    # The claim, the publish and the advance share one transaction: a crash before the
    # commit makes another replica publish the occurrence again (with the same event id,
    # so consumers drop the repeat). The outbox of issue 6 replaces publishing inside
    # the transaction: the claim writes an outbox row, published after the commit.
    async with due.claim_due(limit=batch_size) as claimed:
        plans = [
            (
                schedule,
                plan_due_occurrence(
                    schedule.rule, schedule.next_fire_at, now=claimed.now, grace=grace
                ),
            )
            for schedule in claimed.schedules
        ]
        to_publish = [(schedule, plan) for schedule, plan in plans if plan.publish]
        errors = await asyncio.gather(
            *(publisher.publish(triggered_event(s, plan.occurrence)) for s, plan in to_publish),
            return_exceptions=True,
        )
        failed = {
            schedule.id: error
            for (schedule, _), error in zip(to_publish, errors, strict=True)
            if isinstance(error, BaseException)
        }
        results: list[FiredOccurrence] = []
        for schedule, plan in plans:
            result = _settle(claimed, schedule, plan, failed.get(schedule.id))
            results.append(
                FiredOccurrence(
                    schedule_id=str(schedule.id),
                    task_id=schedule.task_id,
                    occurrence=plan.occurrence,
                    result=result,
                    lateness=claimed.now - plan.occurrence,
                )
            )
        return results


def _settle(
    claimed: ClaimedSchedules,
    schedule: Schedule,
    plan: DueOccurrence,
    publish_error: BaseException | None,
) -> OccurrenceResult:
    context = {
        "schedule_id": str(schedule.id),
        "task_id": schedule.task_id,
        "occurrence": occurrence_iso(plan.occurrence),
    }
    if publish_error is not None:
        # Not advanced: the commit unlocks the row unchanged, and a later tick claims it.
        log.warning(
            "publishing an occurrence failed; retrying on a later tick",
            error=f"{type(publish_error).__name__}: {publish_error}",
            **context,
        )
        return OccurrenceResult.FAILED
    fired_at = claimed.now if plan.publish else None
    claimed.advance(schedule, next_fire_at=plan.next_fire_at, fired_at=fired_at)
    if plan.next_fire_at is None:
        log.warning("the schedule never fires again; deactivated", **context)
    if not plan.publish:
        log.warning("skipped an occurrence missed by more than the grace period", **context)
        return OccurrenceResult.SKIPPED
    return OccurrenceResult.PUBLISHED
