from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from recurring_task_service.schedules import (
    MissedRun,
    NewSchedule,
    Rule,
    Schedule,
    ScheduleOptions,
)
from taskevents.events import TaskEvent


class StoreUnavailableError(RuntimeError):
    """The schedule store cannot be reached just now; trying again later may work."""


class StoreRefusedError(ValueError):
    """The schedule store refuses these values and always will (a character Postgres cannot
    keep, a number out of its range): the event is dropped with the reason, never retried."""


class ScheduleExistsError(ValueError):
    def __init__(self, task_id: str, schedule_id: uuid.UUID) -> None:
        super().__init__(f"task {task_id!r} already has schedule {schedule_id}")
        self.task_id = task_id
        self.schedule_id = schedule_id


@dataclass(frozen=True, slots=True)
class ScheduleUpdate:
    """The whole new state of an edited schedule (PATCH, pause, resume)."""

    rule: Rule
    payload: dict[str, Any]
    options: ScheduleOptions
    paused: bool
    next_fire_at: datetime | None
    active: bool


@dataclass(frozen=True, slots=True)
class MissedRecord:
    schedule_id: uuid.UUID
    task_id: str
    run: MissedRun
    recorded_at: datetime


class ScheduleStore(Protocol):
    """Schedules as the HTTP API manages them."""

    async def create(self, new: NewSchedule) -> Schedule:
        """Raises ScheduleExistsError when the task already has a schedule."""
        ...

    async def get(self, schedule_id: uuid.UUID) -> Schedule | None: ...

    async def list_for_user(self, user_id: str | None, *, limit: int) -> list[Schedule]: ...

    async def delete(self, schedule_id: uuid.UUID) -> bool: ...

    async def update(
        self,
        schedule_id: uuid.UUID,
        edit: Callable[[Schedule], ScheduleUpdate],
        *,
        cause: str | None = None,
    ) -> Schedule | None:
        """Lock the schedule, compute its new state from the current one with `edit`
        (which may raise to refuse the change), store it with `cause` (the request's
        `traceparent`). None: no such schedule."""
        ...

    async def enqueue(
        self,
        schedule_id: uuid.UUID,
        make_event: Callable[[Schedule], TaskEvent],
        *,
        cause: str | None = None,
    ) -> TaskEvent | None:
        """Put the event `make_event` builds from the schedule into the outbox (a manual
        trigger; `cause`, the request's `traceparent`); None: no such schedule. An event id
        already waiting is not added twice."""
        ...

    async def missed(self, schedule_id: uuid.UUID, *, limit: int) -> list[MissedRecord]: ...


class TaskChange(StrEnum):
    APPLIED = "applied"
    NOTHING = "nothing"  # nothing to change (no schedule to remove, not a completion rule)
    STALE = "stale"  # older than what the task's events already set: ignored


class TaskSchedules(Protocol):
    """The one schedule of each task, as task events set it. Each change carries the
    event's time: a change older than the newest one applied for the task (a deletion
    included) is ignored."""

    async def put_for_task(self, new: NewSchedule, *, event_at: datetime) -> TaskChange:
        """Create the task's schedule, or update it; an unchanged rule keeps its next
        fire time."""
        ...

    async def delete_for_task(self, task_id: str, *, event_at: datetime) -> TaskChange: ...

    async def complete_task(
        self,
        task_id: str,
        *,
        completed_at: datetime,
        plan: Callable[[Schedule], datetime | None],
        cause: str | None = None,
    ) -> TaskChange:
        """For a completion-based schedule of the task: set its next fire time to what
        `plan` says (None: the schedule is over) and its cause to the completion's. A
        completion not newer than the last one applied changes nothing."""
        ...


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    event: TaskEvent
    due_at: datetime
    cause: str | None = None  # the `traceparent` its publish links to


class ClaimedSchedules(Protocol):
    """Due schedules locked by one transaction; nobody else can claim them meanwhile."""

    @property
    def now(self) -> datetime: ...

    @property
    def schedules(self) -> Sequence[Schedule]: ...

    @property
    def broken_count(self) -> int:
        """Due schedules this claim found unreadable: marked broken at commit, left out."""
        ...

    def settle(
        self,
        schedule: Schedule,
        *,
        events: Sequence[PlannedEvent],
        missed: Sequence[MissedRun],
        next_fire_at: datetime | None,
        finished: bool,
    ) -> None:
        """Record, at commit: the events into the outbox, the missed runs, and when the
        schedule fires next (`finished`: never again)."""


class DueSchedules(Protocol):
    def claim_due(self, *, limit: int) -> AbstractAsyncContextManager[ClaimedSchedules]:
        """Claim up to `limit` due schedules (active, not paused), oldest first, skipping
        those another replica holds. Leaving the block commits what was settled; an
        exception rolls everything back."""
        ...

    async def next_fire_at(self) -> datetime | None:
        """The earliest next fire time of any active, unpaused schedule."""
        ...


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    id: int
    event: TaskEvent | None  # None: the stored bytes are no event (`unreadable` says why)
    due_at: datetime
    task_id: str
    attempts: int = 0  # failed attempts before this one
    unreadable: str | None = None
    cause: str | None = None  # the `traceparent` its publish links to


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    entry_id: int
    error: str
    retry_at: datetime | None  # None: give up and park the row with `error` as the reason


class OutboxLease(Protocol):
    """Entries leased to this replica, outside any transaction: nobody else takes them
    until the lease runs out (a crash: another replica publishes them, same event id)."""

    @property
    def entries(self) -> Sequence[OutboxEntry]: ...


class Outbox(Protocol):
    async def lease(self, *, limit: int, lease_seconds: float) -> OutboxLease:
        """Lease up to `limit` waiting events, oldest first: not parked, due for an
        attempt, not under a live lease, and not behind an event of the same task that
        waits for its retry or another replica's lease (one task's events go out in
        order; parked ones hold nothing up). The lease commits before anything is
        published."""
        ...

    async def settle(
        self,
        lease: OutboxLease,
        *,
        published: Sequence[int],
        failed: Sequence[FailedAttempt],
        released: Sequence[int],
    ) -> None:
        """After publishing: delete the published rows; count a failed attempt (retry at
        its time, or park); hand back the rest untouched. Rows whose lease was taken
        over by another replica meanwhile are left to it, except for the deletes."""
        ...


@dataclass(frozen=True, slots=True)
class ParkedEvent:
    id: int
    event_id: str
    schedule_id: uuid.UUID
    task_id: str
    due_at: datetime
    attempts: int
    reason: str
    parked_at: datetime


class ParkedOutbox(Protocol):
    """Outbox rows given up on, for operators: listed with their reason, requeued."""

    async def parked(self, *, limit: int) -> list[ParkedEvent]: ...

    async def requeue(self, entry_id: int) -> bool:
        """Make a parked row wait for publishing again, with a fresh attempt count."""
        ...


class Publisher(Protocol):
    async def publish(self, event: TaskEvent, *, cause: str | None = None) -> None:
        """`cause`: the `traceparent` of what the event follows from, in another trace."""


class ConnectingPublisher(Publisher, Protocol):
    async def connect(self) -> None:
        """Be ready to publish (the sidecar answers); the first publish is then quick."""


class Waker(Protocol):
    def wake_at(self, when: datetime) -> None:
        """Look for due schedules at `when`, if that is before the next regular look."""
