"""What the handlers and the socket endpoint need: a fan-out, a token check and the audit
log (for what a resuming client missed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
    """A user's events from the audit log, newest first, down to (and including) the
    anchor event when `found_anchor`."""

    newest_first: Sequence[TaskEvent] = ()
    found_anchor: bool = False
    truncated: bool = False  # stopped at the limit before reaching the anchor
    ids: frozenset[str] = field(default_factory=frozenset)


class AuditUnavailableError(Exception):
    pass


class AuditLog(Protocol):
    async def history_until(
        self, user_id: str | None, anchor_event_id: str, *, max_events: int, bearer_token: str
    ) -> AuditHistory:
        """The user's (None: everyone's) events newest first, until the anchor or
        `max_events`, asked with the client's own token (the audit log applies its rules to
        it: a user reads their own events, an operator everyone's); AuditUnavailableError
        when the audit log does not answer or refuses."""
        ...
