"""How a task event becomes notifications: for each channel the user wants, sent at most
once per (event, channel) except after a crash between claim and send (README: "Never
twice"), deferred during quiet hours, summarised in a digest past the rate limit, kept for
the background relay while its channel is down, not sent when the event is too old."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from notification_service.emails import EmailComposer
from notification_service.metrics import NOTIFICATIONS
from notification_service.ports import (
    SMS_OFF_REASON,
    Channel,
    Claim,
    ClaimResult,
    DeadLetters,
    DeliveryRejectedError,
    DeliveryTemporarilyFailedError,
    DueItem,
    Email,
    Kind,
    Ledger,
    LedgerEntry,
    LedgerUnavailableError,
    Mailer,
    Message,
    Notification,
    NotificationLog,
    NotificationLogUnavailableError,
    PreferenceStore,
    PreferencesUnavailableError,
    RateLimit,
    Reservation,
    SmsSender,
    Status,
)
from notification_service.preferences import (
    Preferences,
    is_e164,
    is_plausible_address,
    zone_or_utc,
)
from notification_service.sms import SmsComposer
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.retry import HELD_ELSEWHERE, RetryPolicy
from taskevents.status import DaprStatus, Outcome
from taskevents.tracing import SpanKind, span

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Policy:
    event_types: frozenset[str]
    default_channels: frozenset[Channel] = frozenset({Channel.EMAIL})
    # Tasks whose payload.priority is one of these are sent even in quiet hours.
    urgent_priorities: frozenset[str] = frozenset({"urgent"})
    # False when the deployment has no SMS provider: an SMS is recorded as skipped, not sent.
    sms_on: bool = True
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(0, 600.0))
    # A delivery that finds another one sending waits this long for it to finish (or for
    # its claim to expire) before asking Dapr to retry, looking again after a growing wait
    # of at most `claim_poll_seconds`.
    claim_wait_seconds: float = 5.0
    claim_poll_seconds: float = 0.5
    # A deferred notification whose send failed for a while is tried again this much later
    # (doubling per attempt) and given up after `deferred_max_attempts`.
    deferred_retry_seconds: float = 30.0
    deferred_max_attempts: int = 10
    # A send that fails for a while (SMTP/SMS down) is kept in the ledger and retried by the
    # background relay — `retry_first_seconds` later, doubling up to
    # `retry_max_interval_seconds` — until `retry_budget_seconds` after the first failure,
    # then dead-lettered with the reason. The delivery itself answers SUCCESS, so its Kafka
    # partition moves on. 0 answers RETRY instead (Dapr's retries, then its dead letter).
    retry_budget_seconds: float = 0.0
    retry_first_seconds: float = 5.0
    retry_max_interval_seconds: float = 30.0
    # An event on the topic longer than this when it arrives (a new consumer group reading
    # the topic's history) is recorded as too old and not sent; 0 sends whatever arrives.
    max_event_age_seconds: float = 0.0

    @property
    def claim_retry(self) -> RetryPolicy:
        return RetryPolicy(
            HELD_ELSEWHERE.name,
            first_wait_seconds=min(HELD_ELSEWHERE.first_wait_seconds, self.claim_poll_seconds),
            max_wait_seconds=self.claim_poll_seconds,
            give_up_after_seconds=self.claim_wait_seconds,
        )


@dataclass(frozen=True, slots=True)
class Ports:
    mailer: Mailer
    sms: SmsSender
    claims: NotificationLog
    preferences: PreferenceStore
    ledger: Ledger
    emails: EmailComposer
    texts: SmsComposer
    dead_letters: DeadLetters | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def email_recipient(event: TaskEvent, preferences: Preferences | None = None) -> str | None:
    if preferences is not None and preferences.email:
        return preferences.email
    value = event.payload.get("user_email")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def phone_recipient(event: TaskEvent, preferences: Preferences | None = None) -> str | None:
    if preferences is not None and preferences.phone:
        return preferences.phone
    value = event.payload.get("user_phone")
    if isinstance(value, str) and value.strip():
        return value.strip().replace(" ", "")
    return None


def user_zone(event: TaskEvent, preferences: Preferences | None) -> ZoneInfo:
    """The user's time zone: preferences, else the task's `timezone`, else UTC."""
    if preferences is not None:
        return preferences.zone
    return zone_or_utc(event.payload.get("timezone"))


def is_urgent(event: TaskEvent, policy: Policy) -> bool:
    priority = event.payload.get("priority")
    return isinstance(priority, str) and priority.lower() in policy.urgent_priorities


def combine(outcomes: Iterable[Outcome]) -> Outcome:
    """One answer for all channels: a retry wins (the channels already sent are no-ops on
    the redelivery), then a drop, then success."""
    collected = list(outcomes)
    for status in (DaprStatus.RETRY, DaprStatus.DROP):
        reasons = [o.reason or "" for o in collected if o.status is status]
        if reasons:
            return Outcome(status, "; ".join(reasons))
    reasons = [o.reason for o in collected if o.reason]
    return Outcome.success("; ".join(reasons) if reasons else None)


async def notify_user_or_dead_letter(
    event: TaskEvent,
    envelope: dict[str, Any] | None,
    *,
    ports: Ports,
    policy: Policy,
    published_at: datetime | None = None,
) -> Outcome:
    """The handler of every delivered task event (`envelope`: its CloudEvent;
    `published_at`: when it was appended to the topic, Kafka's record timestamp)."""
    outcome = await notify_user(event, ports=ports, policy=policy, published_at=published_at)
    return await dead_letter_with_reason(outcome, event, envelope, ports=ports)


def too_old(
    event: TaskEvent, published_at: datetime | None, now: datetime, policy: Policy
) -> str | None:
    """Why the event is too old to send, if it is. Its age is the time since it was appended
    to the topic (Kafka's timestamp), not since `event.timestamp`: a dead letter replayed
    today or a recurring occurrence caught up after a restart carry an old `timestamp` and
    must still be sent; the topic's history, read by a new consumer group, must not. Without
    a record timestamp, `event.timestamp` stands in."""
    if policy.max_event_age_seconds <= 0:
        return None
    since = published_at or event.timestamp
    age = (now - since).total_seconds()
    if age <= policy.max_event_age_seconds:
        return None
    return (
        f"too old to send: on the topic since {since.isoformat()} ({age:.0f} s), "
        f"NOTIFY_MAX_EVENT_AGE_SECONDS is {policy.max_event_age_seconds:g}"
    )


async def notify_user(
    event: TaskEvent, *, ports: Ports, policy: Policy, published_at: datetime | None = None
) -> Outcome:
    """Notify the user on each channel they want, as their preferences say."""
    if event.type not in policy.event_types:
        return Outcome.success()
    try:
        preferences = await ports.preferences.get(event.user_id)
    except PreferencesUnavailableError as error:
        return Outcome.retry(f"preferences unavailable: {error}")
    if preferences is not None and event.type in preferences.muted_event_types:
        log.info("event type muted by the user; nothing sent", user_id=event.user_id)
        return Outcome.success(f"{event.type} muted")
    channels = (
        {Channel(c) for c in preferences.channels}
        if preferences is not None
        else set(policy.default_channels)
    )
    if not channels:
        return Outcome.success("no channel enabled")
    stale = too_old(event, published_at, ports.clock(), policy)
    outcomes = [
        await notify_on_channel(
            event, channel, preferences, ports=ports, policy=policy, too_old_reason=stale
        )
        for channel in sorted(channels)
    ]
    return combine(outcomes)


async def dead_letter_with_reason(
    outcome: Outcome, event: TaskEvent, envelope: dict[str, Any] | None, *, ports: Ports
) -> Outcome:
    """A DROP becomes a dead letter that carries its reason: published by us, then SUCCESS.
    When that publish fails the DROP stands and Dapr dead-letters it (without the reason)."""
    if outcome.status is not DaprStatus.DROP or ports.dead_letters is None:
        return outcome
    reason = outcome.reason or "dropped"
    try:
        await ports.dead_letters.dead_letter(
            envelope if envelope is not None else synthetic_envelope(event),
            key=event.task_id,
            reason=reason,
        )
    except Exception as error:
        log.warning("could not dead-letter with the reason; Dapr will", error=str(error))
        return outcome
    log.warning("dead-lettered", reason=reason)
    return Outcome.success(f"dead-lettered: {reason}")


def synthetic_envelope(event: TaskEvent) -> dict[str, Any]:
    """The CloudEvent Dapr would have delivered, for an event taken from the ledger."""
    return {
        "specversion": "1.0",
        "id": event.event_id,
        "source": "notification-service",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "topic": "task-events",
        "pubsubname": "kafka-pubsub",
        "time": datetime.now(UTC).isoformat(),
        "data": event.model_dump(mode="json"),
    }


async def notify_on_channel(
    event: TaskEvent,
    channel: Channel,
    preferences: Preferences | None,
    *,
    ports: Ports,
    policy: Policy,
    from_deferred: bool = False,
    too_old_reason: str | None = None,
) -> Outcome:
    if channel is Channel.SMS and not policy.sms_on:
        return await skip_sms(event, preferences, ports=ports)
    recipient, problem = _recipient(event, channel, preferences)
    if too_old_reason is not None:
        return await _skip_too_old(event, channel, recipient, too_old_reason, ports=ports)
    if problem is not None:
        return Outcome.drop(problem)
    if recipient is None:
        log.info(f"no {channel} recipient for this event; nothing sent", user_id=event.user_id)
        return Outcome.success(f"no {'email address' if channel is Channel.EMAIL else 'phone'}")

    entry = ledger_entry(event, channel, recipient, with_event=True)
    notification = entry.notification
    try:
        quiet_until = preferences.quiet_until(ports.clock()) if preferences else None
        if quiet_until is not None and not is_urgent(event, policy):
            if from_deferred:
                await ports.ledger.reschedule(
                    notification, due_at=quiet_until, reason="quiet hours"
                )
                return Outcome.success(f"{channel} deferred until {quiet_until.isoformat()}")
            stored = await ports.ledger.defer(entry, due_at=quiet_until, reason="quiet hours")
            NOTIFICATIONS.labels(channel.value, Status.DEFERRED.value).inc(int(stored))
            log.info("quiet hours: deferred", channel=channel, until=quiet_until.isoformat())
            return Outcome.success(
                f"{channel} deferred until {quiet_until.isoformat()}"
                if stored
                else f"{channel} already handled"
            )
        reservation = await ports.ledger.reserve(
            entry, limit=policy.rate_limit, from_deferred=from_deferred
        )
    except LedgerUnavailableError as error:
        return Outcome.retry(f"ledger unavailable: {error}")
    if reservation is Reservation.DONE:
        return Outcome.success(f"{channel} already sent for this event")
    if reservation is Reservation.QUEUED:
        return Outcome.success(f"{channel} already queued")
    if reservation is Reservation.DIGEST:
        NOTIFICATIONS.labels(channel.value, Status.DIGEST_PENDING.value).inc()
        log.info("rate limit reached: into the next digest", channel=channel)
        return Outcome.success(f"{channel} over the rate limit: summarised in the next digest")

    zone = user_zone(event, preferences)
    message: Message = (
        ports.emails.compose(event, recipient, zone)
        if channel is Channel.EMAIL
        else ports.texts.compose(event, recipient, zone)
    )
    outcome = await send_once(notification, message, ports=ports, policy=policy)
    if outcome.status is DaprStatus.RETRY and not from_deferred and policy.retry_budget_seconds:
        return await _retry_later(notification, outcome, ports=ports, policy=policy)
    return outcome


async def _retry_later(
    notification: Notification, failed: Outcome, *, ports: Ports, policy: Policy
) -> Outcome:
    """Keep the notification for the background relay instead of holding the partition in
    Dapr's retries: once the ledger has it, the delivery is done (SUCCESS). Without the
    ledger, Dapr retries it (RETRY)."""
    now = ports.clock()
    give_up_at = now + timedelta(seconds=policy.retry_budget_seconds)
    reason = failed.reason or "retry"
    try:
        kept = await ports.ledger.retry_later(
            notification,
            due_at=now + timedelta(seconds=policy.retry_first_seconds),
            give_up_at=give_up_at,
            reason=reason,
        )
    except LedgerUnavailableError as error:
        log.warning("could not keep it for a retry; Dapr retries it", error=str(error))
        return failed
    if not kept:  # sent (or refused) by another delivery meanwhile: the redelivery sees it
        return failed
    NOTIFICATIONS.labels(notification.channel.value, Status.DEFERRED.value).inc()
    log.warning(
        f"{notification.channel} kept for a retry",
        reason=reason,
        give_up_at=give_up_at.isoformat(),
    )
    return Outcome.success(f"{reason}: retried until {give_up_at.isoformat()}")


def ledger_entry(
    event: TaskEvent, channel: Channel, recipient: str, *, with_event: bool
) -> LedgerEntry:
    """The ledger's row of one notification; `with_event` keeps the event to render later."""
    notification = Notification(
        event_id=event.event_id,
        channel=channel,
        event_type=event.type,
        user_id=event.user_id,
        task_id=event.task_id,
        recipient=recipient,
    )
    return LedgerEntry(
        notification=notification,
        title=str(event.payload.get("title") or "")[:200],
        event=event.model_dump(mode="json") if with_event else None,
    )


async def _skip_too_old(
    event: TaskEvent, channel: Channel, recipient: str | None, reason: str, *, ports: Ports
) -> Outcome:
    entry = ledger_entry(event, channel, recipient or "", with_event=False)
    try:
        recorded = await ports.ledger.skip(entry, status=Status.TOO_OLD, reason=reason)
    except LedgerUnavailableError as error:
        return Outcome.retry(f"ledger unavailable: {error}")
    if recorded:
        NOTIFICATIONS.labels(channel.value, Status.TOO_OLD.value).inc()
        log.info(f"{channel} not sent: {reason}")
    return Outcome.success(f"{channel} {reason}")


async def skip_sms(event: TaskEvent, preferences: Preferences | None, *, ports: Ports) -> Outcome:
    """The SMS channel is off: recorded as not sent, with the reason; never retried or
    dead-lettered, so the other channels go as usual."""
    notification = Notification(
        event_id=event.event_id,
        channel=Channel.SMS,
        event_type=event.type,
        user_id=event.user_id,
        task_id=event.task_id,
        recipient=(phone_recipient(event, preferences) or "")[:40],
    )
    entry = LedgerEntry(
        notification=notification, title=str(event.payload.get("title") or "")[:200]
    )
    NOTIFICATIONS.labels(Channel.SMS.value, Status.SKIPPED.value).inc()
    try:
        await ports.ledger.switch_off(entry, reason=SMS_OFF_REASON)
    except LedgerUnavailableError as error:
        log.warning("ledger not updated", status=Status.SKIPPED.value, error=str(error))
    log.info("SMS off: not sent", user_id=event.user_id)
    return Outcome.success(f"sms not sent: {SMS_OFF_REASON}")


async def send_once(
    notification: Notification, message: Message, *, ports: Ports, policy: Policy
) -> Outcome:
    """Claim, send, mark sent — the never-twice core, the same for events and digests."""
    channel = notification.channel
    try:
        claim = await _claim(ports.claims, notification, policy)
    except NotificationLogUnavailableError as error:
        await _record(ports.ledger, notification, Status.FAILED, f"claim: {error}")
        return Outcome.retry(f"notification log unavailable: {error}")
    if claim.result is ClaimResult.ALREADY_SENT:
        await _record(ports.ledger, notification, Status.SENT, None)
        return Outcome.success(f"{channel} already sent for this event")
    if claim.result is ClaimResult.HELD_ELSEWHERE:
        return Outcome.retry(f"another delivery of this event is sending the {channel}")

    label = "SMTP" if channel is Channel.EMAIL else f"SMS ({ports.sms.name})"
    try:
        # A span of its own (no recipient in it: addresses are personal data).
        with span(
            "smtp send" if isinstance(message, Email) else "sms send",
            kind=SpanKind.CLIENT,
            attributes={
                "taskevents.channel": channel.value,
                "taskevents.message_id": message.message_id,
                **(
                    {}
                    if isinstance(message, Email)
                    else {"taskevents.sms_provider": ports.sms.name}
                ),
            },
        ):
            if isinstance(message, Email):
                await ports.mailer.send(message)
            else:
                await ports.sms.send(message)
    except DeliveryTemporarilyFailedError as error:
        await _release(ports.claims, claim)
        await _record(ports.ledger, notification, Status.FAILED, f"{label}: {error.reason}")
        return Outcome.retry(f"{label}: {error.reason}")
    except DeliveryRejectedError as error:
        # Released so that a replay from the dead-letter topic may try again.
        await _release(ports.claims, claim)
        reason = f"{label} rejected the {channel}: {error.reason}"
        await _record(ports.ledger, notification, Status.REJECTED, reason)
        return Outcome.drop(reason)
    except Exception:
        await _release(ports.claims, claim)
        raise

    try:
        await ports.claims.mark_sent(claim, message_id=message.message_id)
    except NotificationLogUnavailableError as error:
        # It is out: asking for a retry would send it again once the claim expires.
        log.warning(f"{channel} sent but not marked sent", error=str(error))
    await _record(ports.ledger, notification, Status.SENT, None)
    log.info(f"{channel} sent", user_id=notification.user_id, message_id=message.message_id)
    return Outcome.success()


async def deliver_due(item: DueItem, *, ports: Ports, policy: Policy) -> Outcome:
    """A deferred notification or a digest whose time has come (from the background task)."""
    if item.kind is Kind.DIGEST:
        outcome = await send_digest(item, ports=ports, policy=policy)
    else:
        outcome = await _deliver_deferred_event(item, ports=ports, policy=policy)
        if outcome.status is DaprStatus.DROP and item.event is not None:
            event = TaskEvent.model_validate(item.event)
            return await dead_letter_with_reason(outcome, event, None, ports=ports)
    if outcome.status is DaprStatus.RETRY:
        now = ports.clock()
        if item.give_up_at is not None:
            if now >= item.give_up_at:
                budget = f"{policy.retry_budget_seconds:g} s"
                reason = f"gave up after the retry budget ({budget}): {outcome.reason}"
                return await _give_up(item, reason, ports=ports, policy=policy)
            delay = policy.retry_first_seconds * 2 ** max(0, item.attempts - 1)
            due_at = min(
                now + timedelta(seconds=min(delay, policy.retry_max_interval_seconds)),
                item.give_up_at,
            )
        elif item.attempts >= policy.deferred_max_attempts:
            reason = f"gave up after {item.attempts} attempts: {outcome.reason}"
            return await _give_up(item, reason, ports=ports, policy=policy)
        else:
            delay = policy.deferred_retry_seconds * 2 ** max(0, item.attempts - 1)
            due_at = now + timedelta(seconds=min(delay, 3600))
        try:
            await ports.ledger.reschedule(
                item.notification, due_at=due_at, reason=outcome.reason or "retry"
            )
        except LedgerUnavailableError as error:
            log.warning("could not reschedule; the lease expires instead", error=str(error))
    return outcome


async def _give_up(item: DueItem, reason: str, *, ports: Ports, policy: Policy) -> Outcome:
    """The end of the retries of a kept notification: dead-lettered with the reason (so one
    replay sends it), then marked refused. When the dead letter cannot be published, it stays
    kept and is given up again on its next turn — never marked refused without one."""
    if item.event is not None and ports.dead_letters is not None:
        event = TaskEvent.model_validate(item.event)
        try:
            await ports.dead_letters.dead_letter(
                synthetic_envelope(event), key=event.task_id, reason=reason
            )
        except Exception as error:
            log.warning("could not dead-letter; trying again later", error=str(error))
            due_at = ports.clock() + timedelta(seconds=policy.retry_first_seconds)
            # Unavailable: the lease runs out and the item is taken again.
            with contextlib.suppress(LedgerUnavailableError):
                await ports.ledger.reschedule(item.notification, due_at=due_at, reason=reason)
            return Outcome.retry(f"dead letter not published: {error}")
    await _record(ports.ledger, item.notification, Status.REJECTED, reason)
    log.error("kept notification given up and dead-lettered", reason=reason)
    return Outcome.success(f"dead-lettered: {reason}")


async def _deliver_deferred_event(item: DueItem, *, ports: Ports, policy: Policy) -> Outcome:
    notification = item.notification
    if item.event is None:
        await _record(ports.ledger, notification, Status.REJECTED, "deferred without its event")
        return Outcome.drop("deferred without its event")
    event = TaskEvent.model_validate(item.event)
    try:
        preferences = await ports.preferences.get(event.user_id)
    except PreferencesUnavailableError as error:
        return Outcome.retry(f"preferences unavailable: {error}")
    if preferences is not None and (
        event.type in preferences.muted_event_types
        or notification.channel.value not in preferences.channels
    ):
        await _record(ports.ledger, notification, Status.CANCELLED, "muted or switched off")
        return Outcome.success("cancelled by the user's preferences")
    return await notify_on_channel(
        event, notification.channel, preferences, ports=ports, policy=policy, from_deferred=True
    )


async def send_digest(item: DueItem, *, ports: Ports, policy: Policy) -> Outcome:
    digest = item.notification
    try:
        preferences = await ports.preferences.get(digest.user_id)
    except PreferencesUnavailableError as error:
        return Outcome.retry(f"preferences unavailable: {error}")
    if preferences is not None:
        quiet_until = preferences.quiet_until(ports.clock())
        if quiet_until is not None:
            await ports.ledger.reschedule(digest, due_at=quiet_until, reason="quiet hours")
            return Outcome.success(f"digest deferred until {quiet_until.isoformat()}")
    try:
        lines = await ports.ledger.digest_lines(digest)
    except LedgerUnavailableError as error:
        return Outcome.retry(f"ledger unavailable: {error}")
    if not lines:
        await _record(ports.ledger, digest, Status.CANCELLED, "nothing to summarise")
        return Outcome.success("empty digest")
    zone = preferences.zone if preferences is not None else ZoneInfo("UTC")
    message: Message = (
        ports.emails.compose_digest(digest.event_id, digest.recipient, lines, zone)
        if digest.channel is Channel.EMAIL
        else ports.texts.compose_digest(digest.event_id, digest.recipient, lines)
    )
    outcome = await send_once(digest, message, ports=ports, policy=policy)
    if outcome.status is DaprStatus.SUCCESS:
        try:
            await ports.ledger.finish_digest(digest, lines, limit=policy.rate_limit)
        except LedgerUnavailableError as error:
            log.warning("digest sent but its lines not marked", error=str(error))
    return outcome


def _recipient(
    event: TaskEvent, channel: Channel, preferences: Preferences | None
) -> tuple[str | None, str | None]:
    """(recipient, why it is unusable)."""
    if channel is Channel.EMAIL:
        address = email_recipient(event, preferences)
        if address is not None and not is_plausible_address(address):
            return None, f"payload.user_email is not an email address: {address[:80]!r}"
        return address, None
    phone = phone_recipient(event, preferences)
    if phone is not None and not is_e164(phone):
        return None, f"payload.user_phone is not an E.164 number: {phone[:40]!r}"
    return phone, None


async def _claim(
    notifications: NotificationLog, notification: Notification, policy: Policy
) -> Claim:
    async def claim() -> Claim:
        return await notifications.claim(notification)

    return await policy.claim_retry.poll(
        claim, until=lambda claim: claim.result is not ClaimResult.HELD_ELSEWHERE
    )


async def _release(notifications: NotificationLog, claim: Claim) -> None:
    try:
        await notifications.release(claim)
    except NotificationLogUnavailableError as error:
        # The claim then expires on its own after the claim TTL.
        log.warning("could not release the claim", error=str(error))


async def _record(
    ledger: Ledger, notification: Notification, status: Status, reason: str | None
) -> None:
    """The ledger is the history: a failure to write it never changes the answer."""
    NOTIFICATIONS.labels(notification.channel.value, status.value).inc()
    try:
        await ledger.record(notification, status, reason=reason)
    except LedgerUnavailableError as error:
        log.warning("ledger not updated", status=status.value, error=str(error))
