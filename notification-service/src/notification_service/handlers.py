"""How a task event becomes a notification, sent at most once per (event, channel) except
after a crash between claim and send (see README: "Never twice")."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from notification_service.emails import EmailComposer, is_plausible_address
from notification_service.ports import (
    Channel,
    Claim,
    ClaimResult,
    Mailer,
    MailRejectedError,
    MailTemporarilyFailedError,
    Notification,
    NotificationLog,
    NotificationLogUnavailableError,
)
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class EmailPolicy:
    event_types: frozenset[str]
    # A delivery that finds another one sending waits this long for it to finish (or for
    # its claim to expire) before asking Dapr to retry.
    claim_wait_seconds: float = 5.0
    claim_poll_seconds: float = 0.5


def email_recipient(event: TaskEvent) -> str | None:
    value = event.payload.get("user_email")
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


async def send_email_notification(
    event: TaskEvent,
    *,
    mailer: Mailer,
    notifications: NotificationLog,
    composer: EmailComposer,
    policy: EmailPolicy,
) -> Outcome:
    if event.type not in policy.event_types:
        return Outcome.success()
    recipient = email_recipient(event)
    if recipient is None:
        log.info("no email address for this event; nothing sent", user_id=event.user_id)
        return Outcome.success("no email address")
    if not is_plausible_address(recipient):
        return Outcome.drop(f"payload.user_email is not an email address: {recipient[:80]!r}")

    email = composer.compose(event, recipient)
    notification = Notification(
        event_id=event.event_id,
        channel=Channel.EMAIL,
        event_type=event.type,
        user_id=event.user_id,
        task_id=event.task_id,
        recipient=recipient,
    )
    try:
        claim = await _claim(notifications, notification, policy)
    except NotificationLogUnavailableError as error:
        return Outcome.retry(f"notification log unavailable: {error}")
    if claim.result is ClaimResult.ALREADY_SENT:
        return Outcome.success("email already sent for this event")
    if claim.result is ClaimResult.HELD_ELSEWHERE:
        return Outcome.retry("another delivery of this event is sending the email")

    try:
        await mailer.send(email)
    except MailTemporarilyFailedError as error:
        await _release(notifications, claim)
        return Outcome.retry(f"SMTP: {error.reason}")
    except MailRejectedError as error:
        # Released so that a replay from the dead-letter topic may try again.
        await _release(notifications, claim)
        return Outcome.drop(f"SMTP rejected the email: {error.reason}")
    except Exception:
        await _release(notifications, claim)
        raise

    try:
        await notifications.mark_sent(claim, message_id=email.message_id)
    except NotificationLogUnavailableError as error:
        # The mail is out: asking for a retry would send it again once the claim expires.
        log.warning("email sent but not marked sent", error=str(error))
    log.info("email sent", user_id=event.user_id, message_id=email.message_id)
    return Outcome.success()


async def _claim(
    notifications: NotificationLog, notification: Notification, policy: EmailPolicy
) -> Claim:
    deadline = time.monotonic() + policy.claim_wait_seconds
    while True:
        claim = await notifications.claim(notification)
        if claim.result is not ClaimResult.HELD_ELSEWHERE or time.monotonic() >= deadline:
            return claim
        await asyncio.sleep(policy.claim_poll_seconds)


async def _release(notifications: NotificationLog, claim: Claim) -> None:
    try:
        await notifications.release(claim)
    except NotificationLogUnavailableError as error:
        # The claim then expires on its own after the claim TTL.
        log.warning("could not release the claim", error=str(error))
