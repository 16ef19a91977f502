"""taskevents shared library: the event contract and the Dapr plumbing every service uses."""

from taskevents.events import EventType, InvalidEventError, TaskEvent, derive_event_id
from taskevents.status import DaprStatus, Outcome

__all__ = [
    "DaprStatus",
    "EventType",
    "InvalidEventError",
    "Outcome",
    "TaskEvent",
    "derive_event_id",
]
