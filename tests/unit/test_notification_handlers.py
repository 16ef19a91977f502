from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from notification_service import deferred, handlers
from notification_service.api.subscriptions import record_timestamp
from notification_service.deferred import DeferredDelivery
from notification_service.emails import EmailComposer
from notification_service.handlers import (
    Policy,
    Ports,
    combine,
    dead_letter_with_reason,
    deliver_due,
    notify_user,
    notify_user_or_dead_letter,
)
from notification_service.ports import (
    Channel,
    Claim,
    ClaimResult,
    DigestLine,
    DueItem,
    Email,
    HistoryEntry,
    Kind,
    LedgerEntry,
    LedgerUnavailableError,
    MailDeliveryError,
    MailRejectedError,
    MailTemporarilyFailedError,
    Notification,
    NotificationLogUnavailableError,
    RateLimit,
    Reservation,
    Sms,
    Status,
)
from notification_service.preferences import Preferences
from notification_service.sms import SmsComposer
from taskevents.events import TaskEvent
from taskevents.logging import add_trace_context
from taskevents.status import DaprStatus, Outcome

NOTIFYING = frozenset({"task.created", "task.completed", "task.recurring.triggered"})
NOW = datetime(2026, 11, 23, 23, 30, tzinfo=UTC)


@dataclass
class FakeMailer:
    sent: list[Email] = field(default_factory=list)
    failures: list[MailDeliveryError] = field(default_factory=list)

    async def send(self, email: Email) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(email)


@dataclass
class FakeSms:
    name: str = "fake"
    sent: list[Sms] = field(default_factory=list)

    async def send(self, sms: Sms) -> None:
        self.sent.append(sms)


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

    def status_of(self, event: TaskEvent, channel: Channel = Channel.EMAIL) -> str | None:
        record = self.records.get((event.event_id, channel))
        return record.status if record else None

    def _check(self) -> None:
        if self.unavailable:
            raise NotificationLogUnavailableError("sidecar not answering")


@dataclass
class FakePreferences:
    stored: dict[str, Preferences] = field(default_factory=dict)

    async def get(self, user_id: str) -> Preferences | None:
        return self.stored.get(user_id)

    async def put(self, user_id: str, preferences: Preferences) -> None:
        self.stored[user_id] = preferences

    async def delete(self, user_id: str) -> bool:
        return self.stored.pop(user_id, None) is not None


@dataclass
class Row:
    entry: LedgerEntry
    status: Status
    kind: Kind = Kind.EVENT
    due_at: datetime | None = None
    reason: str | None = None
    give_up_at: datetime | None = None
    attempts: int = 0


@dataclass
class FakeLedger:
    """The ledger's decisions in memory: statuses per (event, channel), a count of sends per
    user and channel (no clock: everything is in one window), one pending digest at most."""

    rows: dict[tuple[str, Channel], Row] = field(default_factory=dict)

    async def defer(self, entry: LedgerEntry, *, due_at: datetime, reason: str) -> bool:
        key = _key(entry.notification)
        if key in self.rows and self.rows[key].status in (
            Status.SENT,
            Status.DIGESTED,
            Status.DEFERRED,
            Status.DIGEST_PENDING,
            Status.SENDING,
        ):
            return False
        self.rows[key] = Row(entry, Status.DEFERRED, due_at=due_at, reason=reason)
        return True

    async def reserve(
        self, entry: LedgerEntry, *, limit: RateLimit, from_deferred: bool = False
    ) -> Reservation:
        n = entry.notification
        row = self.rows.get(_key(n))
        if row is not None:
            if row.status in (Status.SENT, Status.DIGESTED):
                return Reservation.DONE
            if row.status is Status.DIGEST_PENDING or (
                row.status is Status.DEFERRED and not from_deferred
            ):
                return Reservation.QUEUED
        sent = [
            r for r in self.rows.values()
            if r.entry.notification.user_id == n.user_id
            and r.entry.notification.channel == n.channel
            and r.status in (Status.SENDING, Status.SENT)
        ]  # fmt: skip
        if limit.count and len(sent) >= limit.count:
            self.rows[_key(n)] = Row(entry, Status.DIGEST_PENDING)
            if not any(r.kind is Kind.DIGEST and r.status is Status.DEFERRED
                       for r in self.rows.values()):  # fmt: skip
                digest = Notification(
                    f"digest-{uuid.uuid4()}", n.channel, "notification.digest", n.user_id, "",
                    n.recipient,
                )  # fmt: skip
                self.rows[_key(digest)] = Row(
                    LedgerEntry(digest, ""), Status.DEFERRED, kind=Kind.DIGEST, due_at=NOW
                )
            return Reservation.DIGEST
        if row is not None:  # the row keeps its retry deadline and attempts
            row.entry, row.status = entry, Status.SENDING
        else:
            self.rows[_key(n)] = Row(entry, Status.SENDING)
        return Reservation.SEND

    async def record(
        self, notification: Notification, status: Status, *, reason: str | None = None
    ) -> None:
        row = self.rows.get(_key(notification))
        if row is not None and not (row.status is Status.SENT and status is not Status.SENT):
            row.status, row.reason = status, reason

    async def switch_off(self, entry: LedgerEntry, *, reason: str) -> None:
        row = self.rows.get(_key(entry.notification))
        if row is None or row.status not in (Status.SENT, Status.DIGESTED):
            self.rows[_key(entry.notification)] = Row(entry, Status.SKIPPED, reason=reason)

    async def retry_later(
        self, notification: Notification, *, due_at: datetime, give_up_at: datetime, reason: str
    ) -> bool:
        row = self.rows.get(_key(notification))
        if row is None or row.status not in (Status.SENDING, Status.FAILED):
            return False
        row.status, row.due_at, row.give_up_at, row.reason = (
            Status.DEFERRED, due_at, give_up_at, reason,
        )  # fmt: skip
        row.attempts = 0
        return True

    async def skip(self, entry: LedgerEntry, *, status: Status, reason: str) -> bool:
        key = _key(entry.notification)
        if key in self.rows:
            return False
        self.rows[key] = Row(entry, status, reason=reason)
        return True

    async def take_due(self, *, limit: int, lease_seconds: float) -> list[DueItem]:
        due = [r for r in self.rows.values() if r.status is Status.DEFERRED][:limit]
        for row in due:
            row.attempts += 1
        return [
            DueItem(r.kind, r.entry.notification, r.attempts, r.entry.event, r.give_up_at)
            for r in due
        ]

    async def reschedule(
        self, notification: Notification, *, due_at: datetime, reason: str
    ) -> None:
        row = self.rows[_key(notification)]
        row.status, row.due_at, row.reason = Status.DEFERRED, due_at, reason

    async def digest_lines(self, digest: Notification) -> list[DigestLine]:
        return [
            DigestLine(
                r.entry.notification.event_id,
                r.entry.notification.event_type,
                r.entry.notification.task_id,
                r.entry.title,
                NOW,
            )
            for r in self.rows.values()
            if r.status is Status.DIGEST_PENDING and r.entry.notification.user_id == digest.user_id
        ]

    async def finish_digest(
        self, digest: Notification, lines: list[DigestLine], *, limit: RateLimit
    ) -> None:
        for line in lines:
            self.rows[(line.event_id, digest.channel)].status = Status.DIGESTED

    async def history(
        self, user_id: str, *, since: datetime | None, limit: int
    ) -> list[HistoryEntry]:
        return []

    async def prune(self, *, older_than: timedelta) -> int:
        return 0

    def status_of(self, event: TaskEvent, channel: Channel = Channel.EMAIL) -> Status | None:
        row = self.rows.get((event.event_id, channel))
        return row.status if row else None


def _key(notification: Notification) -> tuple[str, Channel]:
    return (notification.event_id, notification.channel)


@pytest.fixture
def mailer() -> FakeMailer:
    return FakeMailer()


@pytest.fixture
def notifications() -> FakeNotificationLog:
    return FakeNotificationLog()


COMPOSER = EmailComposer(
    link_base_url="http://127.0.0.1:8004", mail_from="taskevents <noreply@taskevents.local>"
)
TEXTS = SmsComposer(link_base_url="http://127.0.0.1:8004")
NO_WAIT = Policy(event_types=NOTIFYING, claim_wait_seconds=0.0)


def created(**payload: Any) -> TaskEvent:
    return TaskEvent.create(
        "task.created",
        task_id="task-42",
        user_id="user-7",
        payload={"title": "Pay rent", "user_email": "ada@example.com", **payload},
    )


@dataclass
class World:
    mailer: FakeMailer
    notifications: FakeNotificationLog
    sms: FakeSms = field(default_factory=FakeSms)
    preferences: FakePreferences = field(default_factory=FakePreferences)
    ledger: FakeLedger = field(default_factory=FakeLedger)

    def ports(self) -> Ports:
        return Ports(
            mailer=self.mailer, sms=self.sms, claims=self.notifications,
            preferences=self.preferences, ledger=self.ledger, emails=COMPOSER, texts=TEXTS,
            clock=lambda: NOW,
        )  # fmt: skip


@pytest.fixture
def world(mailer: FakeMailer, notifications: FakeNotificationLog) -> World:
    return World(mailer, notifications)


async def notify(
    event: TaskEvent,
    mailer: FakeMailer,
    notifications: FakeNotificationLog,
    policy: Policy = NO_WAIT,
) -> Outcome:
    return await notify_user(event, ports=World(mailer, notifications).ports(), policy=policy)


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
    only_completed = Policy(event_types=frozenset({"task.completed"}), claim_wait_seconds=0)

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
        await notify(event, BrokenMailer(), notifications)  # type: ignore[arg-type]
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
    patient = Policy(event_types=NOTIFYING, claim_wait_seconds=5, claim_poll_seconds=0.01)

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


# --- preferences, channels, quiet hours, rate limit ---------------------------------------


async def test_preferences_choose_the_address_and_the_channels(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(
        email="pref@example.com", phone="+4915112345678", channels=frozenset({"email", "sms"})
    )

    outcome = await notify_user(created(), ports=world.ports(), policy=NO_WAIT)

    assert outcome.status is DaprStatus.SUCCESS
    assert [e.recipient for e in world.mailer.sent] == ["pref@example.com"]
    assert [s.recipient for s in world.sms.sent] == ["+4915112345678"]
    assert world.sms.sent[0].body.startswith("New task: Pay rent")


async def test_with_the_sms_channel_off_an_sms_is_recorded_as_not_sent_and_email_goes(
    world: World,
) -> None:
    world.preferences.stored["user-7"] = Preferences(
        email="pref@example.com", phone="+4915112345678", channels=frozenset({"email", "sms"})
    )
    event = created()
    dead_letters: list[str] = []

    class RecordingDeadLetters:
        async def dead_letter(self, envelope: dict[str, Any], *, key: str, reason: str) -> None:
            dead_letters.append(reason)

    ports = replace(world.ports(), dead_letters=RecordingDeadLetters())
    sms_off = replace(NO_WAIT, sms_on=False)

    outcome = await notify_user_or_dead_letter(event, None, ports=ports, policy=sms_off)
    again = await notify_user_or_dead_letter(event, None, ports=ports, policy=sms_off)

    assert outcome.status is DaprStatus.SUCCESS  # not RETRY, not DROP
    assert "SMS is off" in (outcome.reason or "")
    assert again.status is DaprStatus.SUCCESS
    assert [e.recipient for e in world.mailer.sent] == ["pref@example.com"]
    assert world.sms.sent == []
    assert dead_letters == []
    row = world.ledger.rows[(event.event_id, Channel.SMS)]
    assert (row.status, row.reason) == (Status.SKIPPED, "SMS is off (NOTIFY_SMS_PROVIDER=none)")
    assert row.entry.notification.recipient == "+4915112345678"
    assert world.ledger.status_of(event, Channel.EMAIL) is Status.SENT


async def test_with_the_sms_channel_off_a_bad_number_is_not_dead_lettered(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(channels=frozenset({"sms"}))
    event = created(user_phone="555-1234")

    outcome = await notify_user(event, ports=world.ports(), policy=replace(NO_WAIT, sms_on=False))

    assert outcome.status is DaprStatus.SUCCESS
    assert world.ledger.status_of(event, Channel.SMS) is Status.SKIPPED


async def test_a_deferred_sms_due_after_the_channel_went_off_is_skipped(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(
        phone="+4915112345678", channels=frozenset({"sms"})
    )
    event = created()
    notification = Notification(
        event.event_id, Channel.SMS, event.type, "user-7", "task-42", "+4915112345678"
    )
    world.ledger.rows[(event.event_id, Channel.SMS)] = Row(
        LedgerEntry(notification, "Pay rent", event.model_dump(mode="json")), Status.DEFERRED
    )
    [item] = await world.ledger.take_due(limit=10, lease_seconds=60)

    outcome = await deliver_due(item, ports=world.ports(), policy=replace(NO_WAIT, sms_on=False))

    assert outcome.status is DaprStatus.SUCCESS
    assert world.sms.sent == []
    assert world.ledger.status_of(event, Channel.SMS) is Status.SKIPPED


async def test_payload_phone_is_the_fallback_and_must_be_e164(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(channels=frozenset({"sms"}))

    ok = await notify_user(created(user_phone="+15551234567"), ports=world.ports(), policy=NO_WAIT)
    bad = await notify_user(created(user_phone="555-1234"), ports=world.ports(), policy=NO_WAIT)
    none = await notify_user(created(), ports=world.ports(), policy=NO_WAIT)

    assert ok.status is DaprStatus.SUCCESS
    assert [s.recipient for s in world.sms.sent] == ["+15551234567"]
    assert bad.status is DaprStatus.DROP
    assert "E.164" in (bad.reason or "")
    assert none.status is DaprStatus.SUCCESS
    assert none.reason == "no phone"


async def test_a_muted_type_sends_nothing(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(muted_event_types=frozenset({"task.created"}))

    outcome = await notify_user(created(), ports=world.ports(), policy=NO_WAIT)

    assert outcome == Outcome.success("task.created muted")
    assert world.mailer.sent == []
    assert world.notifications.claims == 0


async def test_quiet_hours_defer_and_the_background_task_sends_later(world: World) -> None:
    # 23:30 UTC is 00:30 in Berlin, inside 22:00-07:00.
    world.preferences.stored["user-7"] = Preferences(
        time_zone="Europe/Berlin", quiet_hours={"start": "22:00", "end": "07:00"}
    )
    event = created()

    outcome = await notify_user(event, ports=world.ports(), policy=NO_WAIT)

    assert outcome.status is DaprStatus.SUCCESS
    assert world.mailer.sent == []
    row = world.ledger.rows[(event.event_id, Channel.EMAIL)]
    assert row.status is Status.DEFERRED
    assert row.due_at == datetime(2026, 11, 24, 6, 0, tzinfo=UTC)  # 07:00 in Berlin
    # Delivered again while deferred: still one deferred notification.
    await notify_user(event, ports=world.ports(), policy=NO_WAIT)
    assert len(world.ledger.rows) == 1

    due_at = row.due_at
    later = replace(world.ports(), clock=lambda: due_at)
    [item] = await world.ledger.take_due(limit=10, lease_seconds=60)
    sent = await deliver_due(item, ports=later, policy=NO_WAIT)

    assert sent.status is DaprStatus.SUCCESS
    assert len(world.mailer.sent) == 1
    assert world.ledger.status_of(event) is Status.SENT


async def test_urgent_tasks_ignore_quiet_hours(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(quiet_hours={"start": "22:00", "end": "07:00"})

    await notify_user(created(priority="urgent"), ports=world.ports(), policy=NO_WAIT)

    assert len(world.mailer.sent) == 1


async def test_past_the_rate_limit_the_rest_goes_into_one_digest(world: World) -> None:
    policy = Policy(event_types=NOTIFYING, claim_wait_seconds=0, rate_limit=RateLimit(2, 600))
    events = [created(title=f"Task {i}") for i in range(5)]

    for event in events:
        await notify_user(event, ports=world.ports(), policy=policy)

    assert [e.subject for e in world.mailer.sent] == ["New task: Task 0", "New task: Task 1"]
    assert [world.ledger.status_of(e) for e in events[2:]] == [Status.DIGEST_PENDING] * 3
    [digest] = await world.ledger.take_due(limit=10, lease_seconds=60)
    assert digest.kind is Kind.DIGEST

    outcome = await deliver_due(digest, ports=world.ports(), policy=policy)

    assert outcome.status is DaprStatus.SUCCESS
    assert len(world.mailer.sent) == 3
    mail = world.mailer.sent[-1]
    assert mail.subject == "3 more task notifications"
    assert all(f"Task {i}" in mail.text and f"Task {i}" in mail.html for i in (2, 3, 4))
    assert [world.ledger.status_of(e) for e in events[2:]] == [Status.DIGESTED] * 3


async def test_a_retry_on_one_channel_wins_over_success_on_the_other(world: World) -> None:
    world.preferences.stored["user-7"] = Preferences(
        phone="+4915112345678", channels=frozenset({"email", "sms"})
    )
    world.mailer.failures.append(MailTemporarilyFailedError("421 busy"))
    event = created()

    first = await notify_user(event, ports=world.ports(), policy=NO_WAIT)
    second = await notify_user(event, ports=world.ports(), policy=NO_WAIT)

    assert first.status is DaprStatus.RETRY
    assert second.status is DaprStatus.SUCCESS
    assert len(world.mailer.sent) == 1
    assert len(world.sms.sent) == 1  # not sent again on the redelivery


def test_combine_prefers_retry_then_drop() -> None:
    assert combine([Outcome.success(), Outcome.drop("x"), Outcome.retry("y")]).status is (
        DaprStatus.RETRY
    )
    assert combine([Outcome.success(), Outcome.drop("x")]) == Outcome.drop("x")
    assert combine([]) == Outcome.success()


async def test_a_permanent_rejection_is_dead_lettered_with_its_reason(world: World) -> None:
    @dataclass
    class FakeDeadLetters:
        letters: list[tuple[dict[str, Any], str]] = field(default_factory=list)

        async def dead_letter(self, envelope: dict[str, Any], *, key: str, reason: str) -> None:
            self.letters.append((envelope, reason))

    dead = FakeDeadLetters()
    ports = replace(world.ports(), dead_letters=dead)
    world.mailer.failures.append(MailRejectedError("550 5.1.1 no such user"))
    event = created()

    outcome = await notify_user(event, ports=ports, policy=NO_WAIT)
    final = await dead_letter_with_reason(outcome, event, {"id": "ce-1"}, ports=ports)

    assert outcome.status is DaprStatus.DROP
    assert final.status is DaprStatus.SUCCESS
    assert dead.letters == [({"id": "ce-1"}, "SMTP rejected the email: 550 5.1.1 no such user")]
    assert world.ledger.status_of(event) is Status.REJECTED


# --- a channel down for a while: kept in the ledger, retried by the relay ------------------

KEEPING = Policy(
    event_types=NOTIFYING, claim_wait_seconds=0.0, retry_budget_seconds=300.0,
    retry_first_seconds=5.0, retry_max_interval_seconds=30.0,
)  # fmt: skip


@dataclass
class FakeDeadLetters:
    letters: list[tuple[dict[str, Any], str, str]] = field(default_factory=list)
    broken: bool = False

    async def dead_letter(self, envelope: dict[str, Any], *, key: str, reason: str) -> None:
        if self.broken:
            raise ConnectionError("sidecar away")
        self.letters.append((envelope, key, reason))


async def test_a_channel_down_keeps_the_notification_and_the_delivery_succeeds(
    world: World,
) -> None:
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
    event = created()

    outcome = await notify_user(event, ports=world.ports(), policy=KEEPING)

    # The partition moves on: the ledger holds the notification for the relay.
    assert outcome.status is DaprStatus.SUCCESS
    assert world.mailer.sent == []
    row = world.ledger.rows[(event.event_id, Channel.EMAIL)]
    assert row.status is Status.DEFERRED
    assert row.due_at == NOW + timedelta(seconds=5)
    assert row.give_up_at == NOW + timedelta(seconds=300)
    assert row.reason == "SMTP: Connection refused"
    assert world.notifications.status_of(event) is None  # the claim was released
    # A redelivery meanwhile (Dapr, a rebalance) neither sends nor keeps it twice.
    again = await notify_user(event, ports=world.ports(), policy=KEEPING)
    assert again == Outcome.success("email already queued")
    assert world.mailer.sent == []


async def test_the_relay_backs_off_while_down_and_sends_once_when_it_is_back(
    world: World,
) -> None:
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
    event = created()
    await notify_user(event, ports=world.ports(), policy=KEEPING)
    row = world.ledger.rows[(event.event_id, Channel.EMAIL)]

    waits = []
    for _ in range(4):
        world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
        [item] = await world.ledger.take_due(limit=10, lease_seconds=60)
        outcome = await deliver_due(item, ports=world.ports(), policy=KEEPING)
        assert outcome.status is DaprStatus.RETRY
        assert row.due_at is not None
        waits.append((row.due_at - NOW).total_seconds())
    assert waits == [5.0, 10.0, 20.0, 30.0]  # doubling, at most the longest interval
    assert row.give_up_at == NOW + timedelta(seconds=300)  # retries do not extend it

    [item] = await world.ledger.take_due(limit=10, lease_seconds=60)
    sent = await deliver_due(item, ports=world.ports(), policy=KEEPING)

    assert sent.status is DaprStatus.SUCCESS
    assert len(world.mailer.sent) == 1
    assert world.ledger.status_of(event) is Status.SENT
    assert await world.ledger.take_due(limit=10, lease_seconds=60) == []
    await notify_user(event, ports=world.ports(), policy=KEEPING)  # a late redelivery
    assert len(world.mailer.sent) == 1


async def test_past_the_budget_it_is_dead_lettered_with_the_reason_and_a_replay_sends_it(
    world: World,
) -> None:
    dead = FakeDeadLetters()
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
    event = created()
    await notify_user(event, ports=replace(world.ports(), dead_letters=dead), policy=KEEPING)

    after = replace(world.ports(), dead_letters=dead, clock=lambda: NOW + timedelta(seconds=301))
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
    [item] = await world.ledger.take_due(limit=10, lease_seconds=60)
    outcome = await deliver_due(item, ports=after, policy=KEEPING)

    assert outcome.status is DaprStatus.SUCCESS
    [(envelope, key, reason)] = dead.letters
    assert envelope["data"] == event.model_dump(mode="json")
    assert key == event.task_id
    assert reason == "gave up after the retry budget (300 s): SMTP: Connection refused"
    assert world.ledger.status_of(event) is Status.REJECTED
    assert world.mailer.sent == []

    # The operator replays the dead letter: it arrives as a new delivery and is sent once.
    replayed = await notify_user(event, ports=after, policy=KEEPING)
    assert replayed.status is DaprStatus.SUCCESS
    assert len(world.mailer.sent) == 1
    assert world.ledger.status_of(event) is Status.SENT


async def test_a_dead_letter_that_cannot_be_published_keeps_the_notification(
    world: World,
) -> None:
    dead = FakeDeadLetters(broken=True)
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
    event = created()
    await notify_user(event, ports=world.ports(), policy=KEEPING)
    after = replace(world.ports(), dead_letters=dead, clock=lambda: NOW + timedelta(seconds=301))
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))
    [item] = await world.ledger.take_due(limit=10, lease_seconds=60)

    outcome = await deliver_due(item, ports=after, policy=KEEPING)

    assert outcome.status is DaprStatus.RETRY
    assert world.ledger.status_of(event) is Status.DEFERRED  # given up again next turn


async def test_without_the_ledger_the_failure_is_left_to_dapr(world: World) -> None:
    class DownLedger(FakeLedger):
        async def retry_later(
            self, notification: Notification, *, due_at: datetime, give_up_at: datetime,
            reason: str,
        ) -> bool:  # fmt: skip
            raise LedgerUnavailableError("connection refused")

    world.ledger = DownLedger()
    world.mailer.failures.append(MailTemporarilyFailedError("Connection refused"))

    outcome = await notify_user(created(), ports=world.ports(), policy=KEEPING)

    assert outcome == Outcome.retry("SMTP: Connection refused")


# --- too old to send ----------------------------------------------------------------------

AGED = Policy(event_types=NOTIFYING, claim_wait_seconds=0.0, max_event_age_seconds=3600.0)


async def test_an_event_long_on_the_topic_is_recorded_as_too_old_and_not_sent(
    world: World,
) -> None:
    event = created()

    outcome = await notify_user(
        event, ports=world.ports(), policy=AGED, published_at=NOW - timedelta(hours=2)
    )

    assert outcome.status is DaprStatus.SUCCESS
    assert world.mailer.sent == []
    row = world.ledger.rows[(event.event_id, Channel.EMAIL)]
    assert row.status is Status.TOO_OLD
    assert row.reason is not None
    assert row.reason.startswith("too old to send")


async def test_age_counts_from_the_topic_not_from_the_event_timestamp(world: World) -> None:
    # A replayed dead letter or a caught-up occurrence: an old timestamp, freshly published.
    old = TaskEvent.create(
        "task.created", task_id="task-42", user_id="user-7",
        payload={"title": "Pay rent", "user_email": "ada@example.com"},
        timestamp=NOW - timedelta(days=3),
    )  # fmt: skip

    outcome = await notify_user(old, ports=world.ports(), policy=AGED, published_at=NOW)

    assert outcome.status is DaprStatus.SUCCESS
    assert len(world.mailer.sent) == 1
    # Without a record timestamp the event's own stands in.
    other = old.model_copy(update={"event_id": str(uuid.uuid4())})
    await notify_user(other, ports=world.ports(), policy=AGED)
    assert world.ledger.status_of(other) is Status.TOO_OLD
    assert len(world.mailer.sent) == 1


def test_the_record_timestamp_daprd_passes_is_read_in_either_form() -> None:
    moment = datetime(2026, 11, 23, 23, 30, 1, 250000, tzinfo=UTC)
    assert record_timestamp({"__timestamp": "1795476601250"}) == moment
    assert record_timestamp({"__timestamp": "2026-11-23T23:30:01.25Z"}) == moment
    assert record_timestamp({"__timestamp": "2026-11-23T23:30:01.25"}) == moment
    assert record_timestamp({}) is None
    assert record_timestamp({"__timestamp": "soon"}) is None


async def two_kept_and_their_relay(world: World) -> tuple[list[TaskEvent], DeferredDelivery]:
    """Two events whose emails timed out, kept for the relay of retries; that relay."""
    events = [created(), created()]
    for event in events:
        world.mailer.failures.append(MailTemporarilyFailedError("timed out"))
        await notify_user(event, ports=world.ports(), policy=KEEPING)
    relay = DeferredDelivery(
        ports=world.ports(), policy=KEEPING, poll_seconds=1.0, batch=10, lease_seconds=60.0,
        retention=None,
    )  # fmt: skip
    return events, relay


async def test_a_channel_that_just_failed_is_not_tried_again_in_the_same_round(
    world: World,
) -> None:
    events, relay = await two_kept_and_their_relay(world)
    world.mailer.failures.append(MailTemporarilyFailedError("timed out"))

    assert await relay.run_once() == 2

    # One timeout for the round, not one per row: the second row waits for the next round.
    assert world.mailer.sent == []
    second = world.ledger.rows[(events[1].event_id, Channel.EMAIL)]
    assert second.status is Status.DEFERRED
    assert second.reason == "SMTP: timed out (not tried: it failed for another one just now)"
    assert await relay.run_once() == 2
    assert len(world.mailer.sent) == 2


async def test_each_deferred_item_is_sent_in_a_span_and_logged_with_its_event(
    world: World, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    events, relay = await two_kept_and_their_relay(world)

    with capture_logs(processors=[merge_contextvars, add_trace_context]) as lines:
        # Loggers made under the capture: ones cached before it would log past it.
        for module in (deferred, handlers):
            monkeypatch.setattr(module, "log", structlog.stdlib.get_logger(module.__name__))
        assert await relay.run_once() == 2

    assert len(world.mailer.sent) == 2
    items = {
        s.attributes["taskevents.event_id"]: s  # type: ignore[index]
        for s in spans.get_finished_spans()
        if s.name == "deliver deferred event"
    }
    assert set(items) == {e.event_id for e in events}
    for event in events:
        context = items[event.event_id].context
        assert context is not None
        mine = [line for line in lines if line.get("event_id") == event.event_id]
        # Its handling line and the handler's own ("email sent"), in its span's trace.
        assert {line["event"] for line in mine} >= {"deferred item handled", "email sent"}
        assert all(line["task_id"] == event.task_id for line in mine)
        assert all(line["trace_id"] == f"{context.trace_id:032x}" for line in mine)
