"""What the handlers need from the outside world: a mailer and a log of notifications."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class Channel(StrEnum):
    EMAIL = "email"


@dataclass(frozen=True, slots=True)
class Email:
    recipient: str
    subject: str
    text: str
    html: str
    message_id: str  # "<…@…>", the same for every attempt of one notification
    event_id: str


class MailDeliveryError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MailTemporarilyFailedError(MailDeliveryError):
    """The server or the network may accept it later: SMTP 4xx, refused connection, timeout."""


class MailRejectedError(MailDeliveryError):
    """The server will never accept it: SMTP 5xx for the recipient or the message."""


class Mailer(Protocol):
    async def send(self, email: Email) -> None:
        """Return once the server has accepted the message, or raise a MailDeliveryError."""
        ...


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification: an event on a channel, the unit that is never sent twice."""

    event_id: str
    channel: Channel
    event_type: str
    user_id: str
    task_id: str
    recipient: str


class ClaimResult(StrEnum):
    CLAIMED = "claimed"  # this delivery holds the claim and may send
    ALREADY_SENT = "already-sent"  # an earlier delivery sent it
    HELD_ELSEWHERE = "held-elsewhere"  # another delivery is sending it (or crashed recently)


@dataclass(frozen=True, slots=True)
class Claim:
    notification: Notification
    result: ClaimResult
    token: str  # tells this claim apart from a later one on the same notification


class NotificationLogUnavailableError(Exception):
    """The log cannot answer now (sidecar or state store down, timeout)."""


class NotificationLog(Protocol):
    async def claim(self, notification: Notification) -> Claim:
        """Claim the notification with a first-write-wins write; a claim older than the
        claim TTL counts as abandoned and can be taken over."""
        ...

    async def mark_sent(self, claim: Claim, *, message_id: str) -> None: ...

    async def release(self, claim: Claim) -> None:
        """Give the claim up (the send failed), so that a retry can claim it again."""
        ...
