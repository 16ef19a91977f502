from __future__ import annotations

import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from recurring_task_service.schedules import NewSchedule, Schedule
from taskevents.events import TaskEvent


class StoreUnavailableError(RuntimeError):
    """The schedule store cannot be reached just now; trying again later may work."""


class ScheduleExistsError(ValueError):
    def __init__(self, task_id: str, schedule_id: uuid.UUID) -> None:
        super().__init__(f"task {task_id!r} already has schedule {schedule_id}")
        self.task_id = task_id
        self.schedule_id = schedule_id


class ScheduleStore(Protocol):
    """Schedules as the HTTP API manages them."""

    async def create(self, new: NewSchedule) -> Schedule:
        """Raises ScheduleExistsError when the task already has a schedule."""
        ...

    async def get(self, schedule_id: uuid.UUID) -> Schedule | None: ...

    async def list_for_user(self, user_id: str | None, *, limit: int) -> list[Schedule]: ...

    async def delete(self, schedule_id: uuid.UUID) -> bool: ...


class TaskSchedules(Protocol):
    """The one schedule of each task, as task events set it."""

    async def put_for_task(self, new: NewSchedule) -> Schedule:
        """Create the task's schedule, or update it; an unchanged rule keeps its next
        fire time."""
        ...

    async def delete_for_task(self, task_id: str) -> bool: ...


class ClaimedSchedules(Protocol):
    """Due schedules locked by one transaction; nobody else can claim them meanwhile."""

    @property
    def now(self) -> datetime: ...

    @property
    def schedules(self) -> Sequence[Schedule]: ...

    def advance(
        self, schedule: Schedule, *, next_fire_at: datetime | None, fired_at: datetime | None
    ) -> None:
        """Record, at commit, that the schedule's due occurrence is done (published when
        `fired_at` is set, skipped otherwise) and when it fires next (None: never)."""


class DueSchedules(Protocol):
    def claim_due(self, *, limit: int) -> AbstractAsyncContextManager[ClaimedSchedules]:
        """Claim up to `limit` due schedules, oldest first, skipping those another
        replica holds. Leaving the block commits what was advanced; an exception rolls
        everything back."""
        ...

    async def next_fire_at(self) -> datetime | None:
        """The earliest next fire time of any active schedule."""
        ...


class Publisher(Protocol):
    async def publish(self, event: TaskEvent) -> None: ...


class Waker(Protocol):
    def wake_at(self, when: datetime) -> None:
        """Look for due schedules at `when`, if that is before the next regular look."""
