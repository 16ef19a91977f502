"""Firing due occurrences exactly once. A claim (row lock) plans each due schedule and
writes its events into the outbox in the transaction that advances the schedule; the relay
publishes the outbox afterwards and deletes what was published. A crash between the two
loses nothing (the outbox row stays for any replica) and a crash after a publish but
before its delete publishes the same event id again, which consumers recognise."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from recurring_task_service.ports import (
    DueSchedules,
    Outbox,
    OutboxEntry,
    PlannedEvent,
    Publisher,
)
from recurring_task_service.schedules import (
    MissedReason,
    OccurrenceToPublish,
    Schedule,
    occurrence_event_id,
    occurrence_iso,
    plan_claim,
)
from taskevents.events import EventType, TaskEvent
from taskevents.logging import get_logger
from taskevents.tracing import span

log = get_logger(__name__)

# Rounds of claiming (or relaying) in one tick, so catching up cannot run forever.
MAX_ROUNDS_PER_TICK = 50

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def triggered_event(
    schedule: Schedule, occurrence: datetime, *, coalesced: Mapping[str, Any] | None = None
) -> TaskEvent:
    """The event of one occurrence; the same bytes however often it is built."""
    payload: dict[str, Any] = {
        **schedule.payload,
        "schedule_id": str(schedule.id),
        "occurrence": occurrence_iso(occurrence),
    }
    if coalesced is not None:
        payload["coalesced"] = dict(coalesced)
    return TaskEvent.create(
        EventType.TASK_RECURRING_TRIGGERED,
        task_id=schedule.task_id,
        user_id=schedule.user_id,
        payload=payload,
        event_id=occurrence_event_id(schedule.id, occurrence),
        timestamp=occurrence,
    )


def planned_event(schedule: Schedule, planned: OccurrenceToPublish) -> PlannedEvent:
    coalesced = None
    if planned.coalesced is not None:
        run = planned.coalesced
        coalesced = {
            "first_occurrence": occurrence_iso(run.first),
            "occurrences": (run.count or 0) + 1,  # the run and this one
        }
    return PlannedEvent(
        triggered_event(schedule, planned.occurrence, coalesced=coalesced), planned.occurrence
    )


@dataclass(slots=True)
class ClaimReport:
    schedules: int = 0
    queued: int = 0  # events written to the outbox
    skipped: int = 0  # occurrences missed beyond the grace period
    coalesced: int = 0  # occurrences folded into a coalesced event
    finished: list[str] = field(default_factory=list)

    def add(self, other: ClaimReport) -> None:
        self.schedules += other.schedules
        self.queued += other.queued
        self.skipped += other.skipped
        self.coalesced += other.coalesced
        self.finished.extend(other.finished)


async def claim_due_occurrences(
    due: DueSchedules, *, batch_size: int, grace: timedelta
) -> ClaimReport:
    """Claim every due schedule, in batches, and write its events into the outbox."""
    report = ClaimReport()
    for _ in range(MAX_ROUNDS_PER_TICK):
        batch = await claim_one_batch(due, batch_size=batch_size, grace=grace)
        report.add(batch)
        if batch.schedules < batch_size:
            break
    return report


async def claim_one_batch(due: DueSchedules, *, batch_size: int, grace: timedelta) -> ClaimReport:
    report = ClaimReport()
    async with due.claim_due(limit=batch_size) as claimed:
        for schedule in claimed.schedules:
            assert schedule.next_fire_at is not None  # only due schedules are claimed
            plan = plan_claim(
                schedule.rule,
                schedule.next_fire_at,
                now=claimed.now,
                grace=grace,
                options=schedule.options,
                fire_count=schedule.fire_count,
            )
            claimed.settle(
                schedule,
                events=[planned_event(schedule, p) for p in plan.publish],
                missed=plan.missed,
                next_fire_at=plan.next_fire_at,
                finished=plan.finished,
            )
            report.schedules += 1
            report.queued += len(plan.publish)
            for run in plan.missed:
                context = {
                    "schedule_id": str(schedule.id),
                    "task_id": schedule.task_id,
                    "first_occurrence": occurrence_iso(run.first),
                    "occurrences": run.count,
                }
                if run.reason is MissedReason.BEYOND_GRACE:
                    report.skipped += run.count or 0
                    log.warning("skipped occurrences missed beyond the grace period", **context)
                else:
                    report.coalesced += run.count or 0
                    log.info("coalesced missed occurrences into one event", **context)
            if plan.finished:
                report.finished.append(str(schedule.id))
                log.info("schedule is over", schedule_id=str(schedule.id), task_id=schedule.task_id)
    return report


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    entry: OutboxEntry
    published_at: datetime | None  # None: publishing failed; it stays in the outbox
    error: str | None = None

    @property
    def lateness(self) -> timedelta | None:
        return None if self.published_at is None else self.published_at - self.entry.due_at


async def relay_outbox(
    outbox: Outbox, publisher: Publisher, *, batch_size: int, clock: Clock = utc_now
) -> list[RelayedEvent]:
    """Publish what waits in the outbox, in batches, until it is empty or publishing
    fails (the rest waits for the next tick)."""
    relayed: list[RelayedEvent] = []
    for _ in range(MAX_ROUNDS_PER_TICK):
        batch = await relay_one_batch(outbox, publisher, batch_size=batch_size, clock=clock)
        relayed.extend(batch)
        if len(batch) < batch_size or any(r.published_at is None for r in batch):
            break
    return relayed


async def relay_one_batch(
    outbox: Outbox, publisher: Publisher, *, batch_size: int, clock: Clock
) -> list[RelayedEvent]:
    async with outbox.take(limit=batch_size) as batch:
        if not batch.entries:
            return []
        # A span only for a relay with something to publish: the poller ticks often.
        with span("outbox relay", attributes={"taskevents.batch_size": len(batch.entries)}):
            # The events of one task in order, different tasks side by side.
            by_task: dict[str, list[OutboxEntry]] = defaultdict(list)
            for entry in batch.entries:
                by_task[entry.event.task_id].append(entry)
            outcomes = await asyncio.gather(
                *(_publish_in_order(entries, publisher, clock) for entries in by_task.values())
            )
            relayed = [r for task_outcomes in outcomes for r in task_outcomes]
            for r in relayed:
                if r.published_at is not None:
                    batch.published(r.entry)
                else:
                    log.warning(
                        "publishing a triggered event failed; it stays in the outbox",
                        event_id=r.entry.event.event_id,
                        task_id=r.entry.event.task_id,
                        error=r.error,
                    )
            return relayed


async def _publish_in_order(
    entries: Sequence[OutboxEntry], publisher: Publisher, clock: Clock
) -> list[RelayedEvent]:
    results: list[RelayedEvent] = []
    for position, entry in enumerate(entries):
        try:
            await publisher.publish(entry.event)
        except Exception as error:  # the sidecar or the broker; the row stays
            message = f"{type(error).__name__}: {error}"
            # Later events of the task wait too, so they stay in order.
            results.extend(RelayedEvent(e, None, message) for e in entries[position:])
            break
        results.append(RelayedEvent(entry, clock()))
    return results
