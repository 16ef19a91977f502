"""What the handlers and the query API need from storage, and the records they exchange."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from taskevents.events import TaskEvent


class StorageUnavailableError(Exception):
    """The database does not answer (down, unreachable, no free connection): try again later."""


class UnstorableError(Exception):
    """The database refuses this record for good (e.g. a NUL character in a text field)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where an event came from, as far as the envelope and daprd's metadata tell."""

    source: str | None = None
    trace_id: str | None = None
    kafka_partition: int | None = None
    kafka_offset: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    topic: str
    raw: str
    original_topic: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    event_id: str | None = None
    type: str | None = None
    task_id: str | None = None
    user_id: str | None = None
    reason: str | None = None
    app: str | None = None  # the app that gave up on it, when that can be told


class AuditLog(Protocol):
    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        """Store the event unless its event_id is already there; True when it was new."""
        ...

    async def record_events(self, batch: Sequence[tuple[TaskEvent, Delivery]]) -> set[str]:
        """Store a batch in one round trip and one transaction, skipping the event ids
        already stored (or repeated in the batch); returns the ids that were new."""
        ...

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        """Store the dead letter, or count one more sighting of it; returns the count."""
        ...


class StoredEvent(BaseModel):
    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    task_id: str
    user_id: str
    timestamp: datetime
    received_at: datetime
    payload: dict[str, Any]
    source: str | None
    trace_id: str | None
    schema_version: int
    kafka_partition: int | None
    kafka_offset: int | None
    # The audit log's commit order: larger for every row committed later, never reused
    # (gaps are possible). GET /audit/events?after_seq=N pages by it.
    seq: int


DeadLetterStatus = Literal["new", "replayed", "discarded"]


class StoredDeadLetter(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    message_id: str
    topic: str
    original_topic: str | None
    event_id: str | None
    type: str | None
    task_id: str | None
    user_id: str | None
    reason: str | None
    app: str | None = Field(
        default=None,
        description="The app that gave up on the message; null when daprd of a subscriber of "
        "a shared component dead-lettered it (Dapr's dead letters name no app).",
    )
    first_seen: datetime
    last_seen: datetime
    seen_count: int
    status: DeadLetterStatus
    replay_count: int
    replayed_at: datetime | None
    replayed_by: str | None
    discarded_at: datetime | None
    discarded_by: str | None
    metadata: dict[str, str]
    raw: str


@dataclass(frozen=True, slots=True)
class EventKey:
    """A row's place in the order of GET /audit/events: the keyset a cursor carries."""

    occurred_at: datetime
    event_id: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    task_id: str | None = None
    user_id: str | None = None
    type: str | None = None
    since: datetime | None = None  # the event's timestamp, inclusive
    until: datetime | None = None  # exclusive
    after: EventKey | None = None  # the last row of the previous page
    # Commit order instead of time order: the rows committed after this seq, oldest first.
    after_seq: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    status: DeadLetterStatus | None = None
    original_topic: str | None = None
    type: str | None = None
    since: datetime | None = None  # first seen, inclusive
    until: datetime | None = None  # exclusive
    before_id: int | None = None  # the last id of the previous page
    limit: int = 100


class HourCount(BaseModel):
    hour: datetime
    count: int


class EventStats(BaseModel):
    since: datetime
    until: datetime
    total: int
    by_type: dict[str, int]
    by_hour: list[HourCount]


class AuditReader(Protocol):
    async def list_events(self, where: EventFilter) -> list[StoredEvent]:
        """Newest first, at most `where.limit` rows after `where.after`; with
        `where.after_seq`, the rows committed after it, in commit order."""
        ...

    async def task_history(self, task_id: str, limit: int) -> list[StoredEvent]:
        """Oldest first."""
        ...

    async def commit_seq_of(self, event_id: str, user_id: str | None) -> int | None:
        """The seq of a stored event (of this user, when one is named); None when there is
        no such event (or it is another user's)."""
        ...

    async def event_stats(
        self, since: datetime, until: datetime, user_id: str | None = None
    ) -> EventStats:
        """Counts of the events whose timestamp is in [since, until) (of one user, or all)."""
        ...


class DeadLetterDesk(Protocol):
    """The dead letters as operators see them."""

    async def list_dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        """Newest first (by id)."""
        ...

    async def get_dead_letter(self, letter_id: int) -> StoredDeadLetter | None: ...

    async def mark_replayed(self, letter_id: int, operator: str) -> StoredDeadLetter | None:
        """Count one more replay by `operator`; None when there is no such letter."""
        ...

    async def mark_discarded(self, letter_id: int, operator: str) -> StoredDeadLetter | None:
        """Discard it, recording who and when; None when there is no such letter."""
        ...


class EventRepublisher(Protocol):
    async def republish(
        self, event: TaskEvent, *, cause: str | None = None, replay_for: str | None = None
    ) -> None:
        """Publish the event to task-events again (same event id, same partition key);
        `cause`: the `traceparent` of its first delivery, which the replay's trace links to;
        `replay_for`: the app whose dead letter this is — the only subscriber that handles
        the replay (None: every subscriber does)."""
        ...
