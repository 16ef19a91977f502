"""What the handlers need from the outside world: senders per channel, the claims that keep
a notification from going out twice, the users' preferences and the ledger of what was
sent, deferred or summarised."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from notification_service.preferences import Preferences


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


# Why an SMS is not sent when the deployment has no SMS provider.
SMS_OFF_REASON = "SMS is off (NOTIFY_SMS_PROVIDER=none)"


@dataclass(frozen=True, slots=True)
class Email:
    recipient: str
    subject: str
    text: str
    html: str
    message_id: str  # "<…@…>", the same for every attempt of one notification
    event_id: str


@dataclass(frozen=True, slots=True)
class Sms:
    recipient: str  # E.164
    body: str
    message_id: str  # the same for every attempt: an idempotency key for the provider
    event_id: str


Message = Email | Sms


class DeliveryError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeliveryTemporarilyFailedError(DeliveryError):
    """The server or the network may accept it later (SMTP 4xx, refused connection,
    timeout, HTTP 429/5xx)."""


class DeliveryRejectedError(DeliveryError):
    """The server will never accept it (SMTP 5xx for the recipient, an invalid number)."""


# The names the SMTP adapter raises; kept apart so a log line says which channel failed.
class MailTemporarilyFailedError(DeliveryTemporarilyFailedError):
    pass


class MailRejectedError(DeliveryRejectedError):
    pass


MailDeliveryError = DeliveryError


class Mailer(Protocol):
    async def send(self, email: Email) -> None:
        """Return once the server has accepted the message, or raise a DeliveryError."""
        ...


class SmsSender(Protocol):
    name: str

    async def send(self, sms: Sms) -> None:
        """Return once the provider has accepted the message, or raise a DeliveryError."""
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


class DeadLetters(Protocol):
    async def dead_letter(self, envelope: dict[str, Any], *, key: str, reason: str) -> None:
        """Publish the CloudEvent to the dead-letter topic with the reason; raise on failure."""
        ...


class PreferencesUnavailableError(Exception):
    """The preference store cannot answer now."""


class PreferenceStore(Protocol):
    async def get(self, user_id: str) -> Preferences | None: ...

    async def put(self, user_id: str, preferences: Preferences) -> None: ...

    async def delete(self, user_id: str) -> bool: ...


class LedgerUnavailableError(Exception):
    """The ledger (Postgres) cannot answer now."""


class Status(StrEnum):
    """What the ledger knows about one notification."""

    SENDING = "sending"  # reserved: counted against the rate limit, being sent
    SENT = "sent"
    # waits for due_at: quiet hours, or a retry while its channel is down (give_up_at set)
    DEFERRED = "deferred"
    DIGEST_PENDING = "digest_pending"  # over the rate limit: goes into the next digest
    DIGESTED = "digested"  # summarised in a digest that was sent
    FAILED = "failed"  # a temporary failure; Dapr retries the event
    REJECTED = "rejected"  # permanently refused; dead-lettered
    CANCELLED = "cancelled"  # deferred, then muted or switched off before it was due
    SKIPPED = "skipped"  # not sent: the channel is off in this deployment (no SMS provider)
    TOO_OLD = "too_old"  # on the topic longer than NOTIFY_MAX_EVENT_AGE_SECONDS: not sent


class Kind(StrEnum):
    EVENT = "event"
    DIGEST = "digest"


class Reservation(StrEnum):
    SEND = "send"  # counted against the rate limit: send it now
    DIGEST = "digest"  # over the rate limit: waits for the next digest
    QUEUED = "queued"  # already deferred or waiting for a digest
    DONE = "done"  # already sent or summarised


@dataclass(frozen=True, slots=True)
class RateLimit:
    count: int  # messages per user and channel per window; 0 switches the limit off
    window_seconds: float


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    notification: Notification
    title: str
    event: dict[str, Any] | None = None  # kept for deferred notifications (to render later)


@dataclass(frozen=True, slots=True)
class DueItem:
    """A deferred notification or a digest whose time has come (leased to this process)."""

    kind: Kind
    notification: Notification
    attempts: int
    event: dict[str, Any] | None = None
    give_up_at: datetime | None = None  # a retry while the channel is down: its deadline


@dataclass(frozen=True, slots=True)
class DigestLine:
    event_id: str
    event_type: str
    task_id: str
    title: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    event_id: str
    channel: str
    kind: str
    event_type: str
    task_id: str | None
    recipient: str
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    due_at: datetime | None
    digest_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Ledger(Protocol):
    async def defer(self, entry: LedgerEntry, *, due_at: datetime, reason: str) -> bool:
        """Keep the notification for later; False when it is already sent, queued or
        summarised (a redelivery)."""
        ...

    async def reserve(
        self, entry: LedgerEntry, *, limit: RateLimit, from_deferred: bool = False
    ) -> Reservation:
        """Decide, atomically per user and channel, whether it may be sent now."""
        ...

    async def record(
        self, notification: Notification, status: Status, *, reason: str | None = None
    ) -> None: ...

    async def switch_off(self, entry: LedgerEntry, *, reason: str) -> None:
        """Record a notification that is not sent (its channel is off) unless it was sent."""
        ...

    async def retry_later(
        self, notification: Notification, *, due_at: datetime, give_up_at: datetime, reason: str
    ) -> bool:
        """Keep a notification whose send failed for a while (its channel is down) for the
        background relay: deferred until `due_at`, dead-lettered after `give_up_at`. False
        when it is no longer waiting to be sent (sent meanwhile by another delivery)."""
        ...

    async def skip(self, entry: LedgerEntry, *, status: Status, reason: str) -> bool:
        """Record a notification that will not be sent (too old); False when the ledger
        already knows it (a redelivery: that row stays as it is)."""
        ...

    async def take_due(self, *, limit: int, lease_seconds: float) -> list[DueItem]: ...

    async def reschedule(
        self, notification: Notification, *, due_at: datetime, reason: str
    ) -> None: ...

    async def digest_lines(self, digest: Notification) -> list[DigestLine]: ...

    async def finish_digest(
        self, digest: Notification, lines: list[DigestLine], *, limit: RateLimit
    ) -> None:
        """Mark the digest sent and its lines summarised; schedule another digest for what
        arrived meanwhile."""
        ...

    async def history(
        self, user_id: str, *, since: datetime | None, limit: int
    ) -> list[HistoryEntry]: ...

    async def prune(self, *, older_than: timedelta) -> int:
        """Remove what is done and unchanged for `older_than`; returns how many rows."""
        ...
