"""Firing due occurrences exactly once. A claim (row lock) plans each due schedule and
writes its events into the outbox in the transaction that advances the schedule; the relay
leases outbox rows (a short transaction), publishes them with no transaction open, then
deletes what was published. A crash between claim and publish loses nothing (the row waits
for any replica once its lease runs out) and a crash after a publish but before its delete
publishes the same event id again, which every consumer recognises (DESIGN.md, "Delivery
semantics"). A row that keeps failing is retried with back-off, then parked with its reason
— it never holds up the rows behind it. A schedule that can no longer be read (its time zone
left the tz database) is marked broken with the reason; the others keep firing."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from recurring_task_service.ports import (
    DueSchedules,
    FailedAttempt,
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
from taskevents.logging import about_event, get_logger
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
        triggered_event(schedule, planned.occurrence, coalesced=coalesced),
        planned.occurrence,
        cause=schedule.cause,
    )


@dataclass(slots=True)
class ClaimReport:
    schedules: int = 0
    queued: int = 0  # events written to the outbox
    skipped: int = 0  # occurrences missed beyond the grace period
    coalesced: int = 0  # occurrences folded into a coalesced event
    broken: int = 0  # due schedules that could not be read: marked broken
    finished: list[str] = field(default_factory=list)

    def add(self, other: ClaimReport) -> None:
        self.schedules += other.schedules
        self.queued += other.queued
        self.skipped += other.skipped
        self.coalesced += other.coalesced
        self.broken += other.broken
        self.finished.extend(other.finished)


async def claim_due_occurrences(
    due: DueSchedules, *, batch_size: int, grace: timedelta
) -> ClaimReport:
    """Claim every due schedule, in batches, and write its events into the outbox."""
    report = ClaimReport()
    for _ in range(MAX_ROUNDS_PER_TICK):
        batch = await claim_one_batch(due, batch_size=batch_size, grace=grace)
        report.add(batch)
        if batch.schedules + batch.broken < batch_size:
            break
    return report


async def claim_one_batch(due: DueSchedules, *, batch_size: int, grace: timedelta) -> ClaimReport:
    report = ClaimReport()
    async with due.claim_due(limit=batch_size) as claimed:
        report.broken = claimed.broken_count
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
class RelayPolicy:
    """How the relay treats a row that fails: retried after `first_backoff`, doubling up
    to `max_backoff`, and parked after `max_attempts` failed attempts (the defaults ride
    out about a quarter of an hour of broker or sidecar trouble)."""

    max_attempts: int = 20
    first_backoff: timedelta = timedelta(seconds=1)
    max_backoff: timedelta = timedelta(seconds=60)
    lease: timedelta = timedelta(seconds=30)

    def retry_at(self, attempts: int, now: datetime) -> datetime | None:
        """When to try again after `attempts` failed attempts; None: give up."""
        if attempts >= self.max_attempts:
            return None
        backoff: timedelta = min(self.first_backoff * 2 ** max(attempts - 1, 0), self.max_backoff)
        return now + backoff


DEFAULT_RELAY_POLICY = RelayPolicy()


@dataclass(frozen=True, slots=True)
class RelayedEvent:
    entry: OutboxEntry
    published_at: datetime | None  # None: not published; it stays in the outbox
    error: str | None = None
    parked: bool = False  # given up on (or can never succeed): parked, `error` the reason

    @property
    def lateness(self) -> timedelta | None:
        return None if self.published_at is None else self.published_at - self.entry.due_at


async def relay_outbox(
    outbox: Outbox,
    publisher: Publisher,
    *,
    batch_size: int,
    clock: Clock = utc_now,
    policy: RelayPolicy = DEFAULT_RELAY_POLICY,
) -> list[RelayedEvent]:
    """Publish what waits in the outbox, in batches, until it is empty or publishing
    fails (the rest waits for the next tick)."""
    relayed: list[RelayedEvent] = []
    for _ in range(MAX_ROUNDS_PER_TICK):
        batch = await relay_one_batch(
            outbox, publisher, batch_size=batch_size, clock=clock, policy=policy
        )
        relayed.extend(batch)
        if len(batch) < batch_size or any(r.published_at is None for r in batch):
            break
    return relayed


async def relay_one_batch(
    outbox: Outbox,
    publisher: Publisher,
    *,
    batch_size: int,
    clock: Clock,
    policy: RelayPolicy = DEFAULT_RELAY_POLICY,
) -> list[RelayedEvent]:
    lease = await outbox.lease(limit=batch_size, lease_seconds=policy.lease.total_seconds())
    if not lease.entries:
        return []
    # A span only for a relay with something to publish: the poller ticks often.
    with span("outbox relay", attributes={"taskevents.batch_size": len(lease.entries)}):
        # The events of one task in order, different tasks side by side; no transaction is
        # open while the sidecar is called.
        by_task: dict[str, list[OutboxEntry]] = defaultdict(list)
        for entry in lease.entries:
            by_task[entry.task_id].append(entry)
        outcomes = await asyncio.gather(
            *(_publish_in_order(entries, publisher, clock) for entries in by_task.values())
        )
        relayed: list[RelayedEvent] = []
        published: list[int] = []
        failed: list[FailedAttempt] = []
        released: list[int] = []
        now = clock()
        for r in (r for task_outcomes in outcomes for r in task_outcomes):
            if r.published_at is not None:
                published.append(r.entry.id)
            elif r.error is None:
                released.append(r.entry.id)  # an earlier event of its task failed: it waits
            else:
                attempts = r.entry.attempts + 1
                retry_at = None if r.parked else policy.retry_at(attempts, now)
                reason = r.error
                if retry_at is None and not r.parked:
                    reason = f"gave up after {attempts} attempts: {r.error}"
                failed.append(FailedAttempt(r.entry.id, reason, retry_at))
                r = RelayedEvent(r.entry, None, reason, parked=retry_at is None)
                with about_entry(r.entry):  # in the relay's span: its trace ids too
                    _log_failure(r, attempts, retry_at)
            relayed.append(r)
    await outbox.settle(lease, published=published, failed=failed, released=released)
    return relayed


def about_entry(entry: OutboxEntry) -> AbstractContextManager[None]:
    """Log lines about one outbox row name its event and task (the logging processor adds
    the current span's trace ids)."""
    event_id = entry.event.event_id if entry.event is not None else None
    return about_event(event_id, entry.task_id, outbox_id=entry.id)


def _log_failure(r: RelayedEvent, attempts: int, retry_at: datetime | None) -> None:
    context = {"attempts": attempts, "error": r.error}
    if retry_at is None:
        log.error("a triggered event is parked: it will not be published", **context)
    else:
        log.warning(
            "publishing a triggered event failed; it stays in the outbox",
            retry_at=retry_at.isoformat(),
            **context,
        )


async def _publish_in_order(
    entries: Sequence[OutboxEntry], publisher: Publisher, clock: Clock
) -> list[RelayedEvent]:
    results: list[RelayedEvent] = []
    for position, entry in enumerate(entries):
        try:
            if entry.event is None:
                raise UnpublishableError(entry.unreadable or "no event")
            with about_entry(entry):
                # Its span links to what set the schedule (or asked for the trigger).
                await publisher.publish(entry.event, cause=entry.cause)
        except UnpublishableError as error:
            # Can never be published: every attempt left is spent at once.
            results.append(RelayedEvent(entry, None, f"unreadable outbox row: {error}", True))
            results.extend(RelayedEvent(e, None) for e in entries[position + 1 :])
            break
        except Exception as error:  # the sidecar or the broker; the row stays
            message = f"{type(error).__name__}: {error}"
            # Later events of the task wait too, so they stay in order.
            results.append(RelayedEvent(entry, None, message))
            results.extend(RelayedEvent(e, None) for e in entries[position + 1 :])
            break
        results.append(RelayedEvent(entry, clock()))
    return results


class UnpublishableError(ValueError):
    """An outbox row that no attempt can publish."""
