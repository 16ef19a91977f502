from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

from notification_service.emails import EmailComposer
from notification_service.handlers import EmailPolicy, send_email_notification
from notification_service.ports import (
    Channel,
    Claim,
    ClaimResult,
    Email,
    MailDeliveryError,
    MailRejectedError,
    MailTemporarilyFailedError,
    Notification,
    NotificationLogUnavailableError,
)
from taskevents.events import TaskEvent
from taskevents.status import DaprStatus

NOTIFYING = frozenset({"task.created", "task.completed", "task.recurring.triggered"})


@dataclass
class FakeMailer:
    sent: list[Email] = field(default_factory=list)
    failures: list[MailDeliveryError] = field(default_factory=list)

    async def send(self, email: Email) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(email)


@dataclass
class Record:
    status: str
    token: str
    expired: bool = False
    message_id: str | None = None


@dataclass
class FakeNotificationLog:
    """First-write-wins records in memory; an expired record counts as absent, like the
    state store's TTL."""

    records: dict[tuple[str, Channel], Record] = field(default_factory=dict)
    unavailable: bool = False
    mark_sent_fails: bool = False
    claims: int = 0
    # Called after each refused claim: lets a test play "the other delivery finished".
    after_refusal: Any = None

    async def claim(self, notification: Notification) -> Claim:
        self._check()
        self.claims += 1
        key = (notification.event_id, notification.channel)
        token = str(uuid.uuid4())
        existing = self.records.get(key)
        if existing is None or existing.expired:
            self.records[key] = Record("sending", token)
            return Claim(notification, ClaimResult.CLAIMED, token)
        result = (
            ClaimResult.ALREADY_SENT if existing.status == "sent" else ClaimResult.HELD_ELSEWHERE
        )
        if self.after_refusal is not None:
            self.after_refusal(existing)
        return Claim(notification, result, token)

    async def mark_sent(self, claim: Claim, *, message_id: str) -> None:
        self._check()
        if self.mark_sent_fails:
            raise NotificationLogUnavailableError("state store down")
        key = (claim.notification.event_id, claim.notification.channel)
        self.records[key] = Record("sent", claim.token, message_id=message_id)

    async def release(self, claim: Claim) -> None:
        self._check()
        key = (claim.notification.event_id, claim.notification.channel)
        record = self.records.get(key)
        if record is not None and record.token == claim.token and record.status == "sending":
            del self.records[key]

    def status_of(self, event: TaskEvent) -> str | None:
        record = self.records.get((event.event_id, Channel.EMAIL))
        return record.status if record else None

    def _check(self) -> None:
        if self.unavailable:
            raise NotificationLogUnavailableError("sidecar not answering")


@pytest.fixture
def mailer() -> FakeMailer:
    return FakeMailer()


@pytest.fixture
def notifications() -> FakeNotificationLog:
    return FakeNotificationLog()


COMPOSER = EmailComposer(
    link_base_url="http://127.0.0.1:8004", mail_from="taskevents <noreply@taskevents.local>"
)
NO_WAIT = EmailPolicy(event_types=NOTIFYING, claim_wait_seconds=0.0)


def created(**payload: Any) -> TaskEvent:
    return TaskEvent.create(
        "task.created",
        task_id="task-42",
        user_id="user-7",
        payload={"title": "Pay rent", "user_email": "ada@example.com", **payload},
    )


async def notify(
    event: TaskEvent,
    mailer: FakeMailer,
    notifications: FakeNotificationLog,
    policy: EmailPolicy = NO_WAIT,
) -> Any:
    return await send_email_notification(
        event, mailer=mailer, notifications=notifications, composer=COMPOSER, policy=policy
    )


async def test_task_created_sends_one_email_and_marks_it_sent(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = created(due_at="2026-12-01T09:00:00Z")

    outcome = await notify(event, mailer, notifications)

    assert outcome.status is DaprStatus.SUCCESS
    [email] = mailer.sent
    assert email.recipient == "ada@example.com"
    assert email.subject == "New task: Pay rent"
    assert email.event_id == event.event_id
    assert "Pay rent" in email.text
    assert "Tue 01 Dec 2026, 09:00 UTC" in email.text
    assert "http://127.0.0.1:8004/?task=task-42" in email.text
    assert 'href="http://127.0.0.1:8004/?task=task-42"' in email.html
    assert notifications.status_of(event) == "sent"


async def test_a_redelivered_event_sends_nothing_the_second_time(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = created()

    first = await notify(event, mailer, notifications)
    second = await notify(event, mailer, notifications)

    assert first.status is DaprStatus.SUCCESS
    assert second.status is DaprStatus.SUCCESS
    assert second.reason == "email already sent for this event"
    assert len(mailer.sent) == 1


@pytest.mark.parametrize("event_type", ["task.updated", "task.deleted", "task.archived"])
async def test_other_event_types_send_nothing(
    event_type: str, mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = TaskEvent.create(
        event_type, task_id="t", user_id="u", payload={"user_email": "ada@example.com"}
    )

    outcome = await notify(event, mailer, notifications)

    assert outcome.status is DaprStatus.SUCCESS
    assert mailer.sent == []
    assert notifications.claims == 0


async def test_the_notifying_types_come_from_the_policy(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    only_completed = EmailPolicy(event_types=frozenset({"task.completed"}), claim_wait_seconds=0)

    await notify(created(), mailer, notifications, only_completed)
    completed = TaskEvent.create(
        "task.completed",
        task_id="t",
        user_id="u",
        payload={"title": "Pay rent", "user_email": "ada@example.com"},
    )
    await notify(completed, mailer, notifications, only_completed)

    assert [e.subject for e in mailer.sent] == ["Completed: Pay rent"]


@pytest.mark.parametrize("payload", [{}, {"user_email": ""}, {"user_email": "  "}])
async def test_no_address_sends_nothing_and_succeeds(
    payload: dict[str, Any], mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = TaskEvent.create("task.created", task_id="t", user_id="u", payload=payload)

    outcome = await notify(event, mailer, notifications)

    assert outcome.status is DaprStatus.SUCCESS
    assert outcome.reason == "no email address"
    assert mailer.sent == []


@pytest.mark.parametrize(
    "address", ["not-an-address", "a@b@c", "ada@example.com, eve@example.com", "x\r\n@y"]
)
async def test_an_invalid_address_is_dropped(
    address: str, mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    outcome = await notify(created(user_email=address), mailer, notifications)

    assert outcome.status is DaprStatus.DROP
    assert outcome.reason is not None
    assert "not an email address" in outcome.reason
    assert mailer.sent == []


async def test_a_temporary_smtp_failure_retries_and_the_retry_sends(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = created()
    mailer.failures.append(MailTemporarilyFailedError("451 4.3.0 try again later"))

    first = await notify(event, mailer, notifications)

    assert first.status is DaprStatus.RETRY
    assert first.reason == "SMTP: 451 4.3.0 try again later"
    assert notifications.status_of(event) is None  # the claim was released

    second = await notify(event, mailer, notifications)

    assert second.status is DaprStatus.SUCCESS
    assert len(mailer.sent) == 1


async def test_a_rejected_recipient_is_dropped_with_the_reason(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = created()
    mailer.failures.append(MailRejectedError("recipient refused: 550 5.1.1 no such user"))

    outcome = await notify(event, mailer, notifications)

    assert outcome.status is DaprStatus.DROP
    assert outcome.reason == "SMTP rejected the email: recipient refused: 550 5.1.1 no such user"
    assert notifications.status_of(event) is None  # a replay may try again


async def test_an_unexpected_mailer_error_releases_the_claim_and_propagates(
    notifications: FakeNotificationLog,
) -> None:
    class BrokenMailer:
        async def send(self, email: Email) -> None:
            raise RuntimeError("bug")

    event = created()
    with pytest.raises(RuntimeError):
        await send_email_notification(
            event,
            mailer=BrokenMailer(),
            notifications=notifications,
            composer=COMPOSER,
            policy=NO_WAIT,
        )
    assert notifications.status_of(event) is None


async def test_a_claim_held_by_another_delivery_asks_for_a_retry(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = created()
    notifications.records[(event.event_id, Channel.EMAIL)] = Record("sending", "other")

    outcome = await notify(event, mailer, notifications)

    assert outcome.status is DaprStatus.RETRY
    assert mailer.sent == []


async def test_waiting_for_another_delivery_that_finishes_sends_nothing(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    event = created()
    notifications.records[(event.event_id, Channel.EMAIL)] = Record("sending", "other")

    def other_delivery_finishes(record: Record) -> None:
        record.status = "sent"

    notifications.after_refusal = other_delivery_finishes
    patient = EmailPolicy(event_types=NOTIFYING, claim_wait_seconds=5, claim_poll_seconds=0.01)

    outcome = await notify(event, mailer, notifications, patient)

    assert outcome.status is DaprStatus.SUCCESS
    assert mailer.sent == []
    assert notifications.claims == 2


async def test_an_abandoned_claim_is_taken_over_once_expired(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    # A delivery crashed between claim and send; its claim outlived the claim TTL.
    event = created()
    notifications.records[(event.event_id, Channel.EMAIL)] = Record(
        "sending", "crashed", expired=True
    )

    outcome = await notify(event, mailer, notifications)

    assert outcome.status is DaprStatus.SUCCESS
    assert len(mailer.sent) == 1
    assert notifications.status_of(event) == "sent"


async def test_an_unavailable_log_retries_without_sending(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    notifications.unavailable = True

    outcome = await notify(created(), mailer, notifications)

    assert outcome.status is DaprStatus.RETRY
    assert outcome.reason == "notification log unavailable: sidecar not answering"
    assert mailer.sent == []


async def test_a_sent_email_that_cannot_be_marked_still_succeeds(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    # Retrying would send the mail again once the claim expires.
    notifications.mark_sent_fails = True

    outcome = await notify(created(), mailer, notifications)

    assert outcome.status is DaprStatus.SUCCESS
    assert len(mailer.sent) == 1


async def test_each_event_is_its_own_notification(
    mailer: FakeMailer, notifications: FakeNotificationLog
) -> None:
    await notify(created(), mailer, notifications)
    await notify(created(), mailer, notifications)

    assert len(mailer.sent) == 2
    assert mailer.sent[0].message_id != mailer.sent[1].message_id
