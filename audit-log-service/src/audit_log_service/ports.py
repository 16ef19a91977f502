"""What the handlers and the query API need from storage, and the records they exchange."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

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


class AuditLog(Protocol):
    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        """Store the event unless its event_id is already there; True when it was new."""
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
    first_seen: datetime
    last_seen: datetime
    seen_count: int
    status: DeadLetterStatus
    metadata: dict[str, str]
    raw: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    task_id: str | None = None
    user_id: str | None = None
    type: str | None = None
    limit: int = 100


class AuditReader(Protocol):
    async def list_events(self, where: EventFilter) -> list[StoredEvent]:
        """Newest first."""
        ...

    async def task_history(self, task_id: str, limit: int) -> list[StoredEvent]:
        """Oldest first."""
        ...

    async def list_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        """Newest first."""
        ...
