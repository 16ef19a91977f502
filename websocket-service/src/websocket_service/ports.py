"""What the handlers and the socket endpoint need: a fan-out and a token check."""

from __future__ import annotations

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
class Identity:
    user_id: str


class TokenRejectedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenVerifier(Protocol):
    def verify(self, token: str | None) -> Identity:
        """The identity the token names, or TokenRejectedError saying why not."""
        ...
