"""The task event: the `data` of every CloudEvent on the `task-events` topic."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

SCHEMA_VERSION = 1
# Namespace of the ids derived from content, so every service derives the same id.
EVENT_ID_NAMESPACE = uuid.UUID("8d6a3c1e-51f4-4c1b-9d7e-2b0f6a9e4c30")

NonEmptyId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
EventTypeName = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$", max_length=100)
]


class EventType(StrEnum):
    TASK_CREATED = "task.created"
    TASK_UPDATED = "task.updated"
    TASK_COMPLETED = "task.completed"
    TASK_DELETED = "task.deleted"
    TASK_RECURRING_TRIGGERED = "task.recurring.triggered"


class InvalidEventError(ValueError):
    """An event that can never be processed; the reason says why (it ends in the DLQ)."""


class TaskEvent(BaseModel):
    """A task event. `type` may be a type this version does not know: the audit log keeps
    such events and the other services ignore them (see `known_type`)."""

    # Unknown fields are ignored, not refused: a newer publisher may add some.
    model_config = ConfigDict(frozen=True, extra="ignore", title="TaskEvent")

    event_id: NonEmptyId = Field(description="Idempotency key; also the CloudEvent id.")
    type: EventTypeName = Field(
        description="One of the known types (" + ", ".join(t.value for t in EventType) + ") "
        "or a future type, which consumers other than the audit log ignore.",
        examples=[t.value for t in EventType],
    )
    task_id: NonEmptyId = Field(description="The task; also the Kafka partition key.")
    user_id: NonEmptyId = Field(description="The user the task belongs to.")
    timestamp: AwareDatetime = Field(description="When it happened, with a time zone.")
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="Type-specific details: title, due_at, recurrence, user_email, user_phone…",
    )

    @property
    def known_type(self) -> EventType | None:
        try:
            return EventType(self.type)
        except ValueError:
            return None

    @classmethod
    def create(
        cls,
        type: EventType | str,
        *,
        task_id: str,
        user_id: str,
        payload: Mapping[str, Any] | None = None,
        event_id: str | None = None,
        timestamp: datetime | None = None,
    ) -> TaskEvent:
        try:
            return cls(
                event_id=event_id or str(uuid.uuid4()),
                type=str(type),
                task_id=task_id,
                user_id=user_id,
                timestamp=timestamp or datetime.now(UTC),
                payload=dict(payload or {}),
            )
        except ValidationError as error:
            raise InvalidEventError(_describe(error)) from None

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> TaskEvent:
        """Validate decoded event data; an event without `event_id` gets one derived from
        its content, so a redelivery of the same message maps to the same id."""
        if not isinstance(data, Mapping):
            raise InvalidEventError(f"event data must be a JSON object, not {type(data).__name__}")
        if not data.get("event_id"):
            data = {**data, "event_id": derive_event_id(data)}
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise InvalidEventError(_describe(error)) from None

    def to_json(self) -> str:
        return self.model_dump_json()


def derive_event_id(data: Mapping[str, Any] | bytes | str) -> str:
    """A deterministic id for an event that arrived without one: a UUIDv5 over the
    canonical JSON of its content (or over the raw bytes when it is not JSON)."""
    if isinstance(data, Mapping):
        content = {k: v for k, v in data.items() if k != "event_id"}
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=str)
    elif isinstance(data, bytes):
        text = data.decode("utf-8", errors="surrogateescape")
    else:
        text = data
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, text))


def _describe(error: ValidationError) -> str:
    parts = []
    for issue in error.errors(include_url=False):
        where = ".".join(str(p) for p in issue["loc"]) or "event"
        parts.append(f"{where}: {issue['msg']}")
    return "invalid event: " + "; ".join(parts)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of `TaskEvent`, as published in docs/event-schema.json."""
    schema = TaskEvent.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://taskevents.dev/schemas/task-event.json"
    schema["required"] = ["event_id", "type", "task_id", "user_id", "timestamp"]
    return schema
