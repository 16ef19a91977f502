"""What the handlers and the socket endpoint need: a fan-out, a token check and the audit
log (for what a resuming client missed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from taskevents.events import TaskEvent


@dataclass(frozen=True, slots=True)
class FanoutReport:
    queued: int = 0  # connections the frame was queued for
    duplicates: int = 0  # connections that had this event id already
    overflowed: int = 0  # connections closed because their queue was full


class Fanout(Protocol):
    def publish(self, event: TaskEvent) -> FanoutReport:
        """Queue the event for every connection of its user; never waits for a client."""
        ...


@dataclass(frozen=True, slots=True)
class AuditHistory:
    """A user's events that the audit log committed after the anchor event, in its commit
    order (oldest first), when it has the anchor (`found_anchor`)."""

    events: Sequence[TaskEvent] = ()
    found_anchor: bool = False
    truncated: bool = False  # more than `max_events` follow the anchor; the first are here


class AuditUnavailableError(Exception):
    pass


class AuditLog(Protocol):
    async def history_after(
        self, user_id: str | None, anchor_event_id: str, *, max_events: int, bearer_token: str
    ) -> AuditHistory:
        """The user's (None: everyone's) events committed after the anchor, oldest first,
        at most `max_events`, asked with the client's own token (the audit log applies its
        rules to it: a user reads their own events, an operator everyone's);
        AuditUnavailableError when the audit log does not answer or refuses."""
        ...
