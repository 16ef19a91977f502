from __future__ import annotations

from email import message_from_bytes, policy

import pytest
from pydantic import ValidationError

from notification_service.adapters.smtp import EVENT_ID_HEADER, SmtpMailer
from notification_service.emails import EmailComposer
from notification_service.ports import Channel
from notification_service.preferences import is_plausible_address
from notification_service.settings import Settings
from taskevents.events import TaskEvent

COMPOSER = EmailComposer(
    link_base_url="http://mail.example:8004/", mail_from="taskevents <noreply@taskevents.local>"
)


def event(type_: str = "task.created", **payload: object) -> TaskEvent:
    return TaskEvent.create(
        type_, task_id="task 42/a", user_id="user-7", payload={"title": "Pay rent", **payload}
    )


@pytest.mark.parametrize(
    ("type_", "subject"),
    [
        ("task.created", "New task: Pay rent"),
        ("task.completed", "Completed: Pay rent"),
        ("task.recurring.triggered", "Due again: Pay rent"),
    ],
)
def test_subject_names_what_happened(type_: str, subject: str) -> None:
    assert COMPOSER.compose(event(type_), "ada@example.com").subject == subject


def test_a_task_without_title_is_named_by_its_id() -> None:
    untitled = TaskEvent.create("task.created", task_id="task-9", user_id="u")

    email = COMPOSER.compose(untitled, "ada@example.com")

    assert email.subject == "New task: task task-9"


def test_the_title_cannot_break_out_of_the_subject_or_the_html() -> None:
    hostile = event(title="Hi\r\nBcc: eve@example.com <script>alert(1)</script>")

    email = COMPOSER.compose(hostile, "ada@example.com")

    assert "\n" not in email.subject
    assert "\r" not in email.subject
    assert "<script>" not in email.html
    assert "&lt;script&gt;" in email.html
    assert "<script>" in email.text  # plain text is not HTML


def test_the_link_quotes_the_task_id_and_uses_the_base_url() -> None:
    email = COMPOSER.compose(event(), "ada@example.com")

    assert "http://mail.example:8004/?task=task%2042%2Fa" in email.text


def test_due_date_is_shown_when_there_is_one() -> None:
    with_due = COMPOSER.compose(event(due_at="2026-12-01T10:00:00+01:00"), "a@example.com")
    without = COMPOSER.compose(event(), "a@example.com")
    unparsable = COMPOSER.compose(event(due_at="next friday"), "a@example.com")

    assert "Due: Tue 01 Dec 2026, 09:00 UTC" in with_due.text
    assert "Due:" not in without.text
    assert "Due: next friday" in unparsable.text


def test_message_id_is_stable_per_event_and_channel() -> None:
    one = event()

    first = COMPOSER.compose(one, "ada@example.com")
    again = COMPOSER.compose(one, "ada@example.com")
    other = COMPOSER.compose(event(), "ada@example.com")

    assert first.message_id == again.message_id
    assert first.message_id != other.message_id
    assert first.message_id.startswith("<")
    assert first.message_id.endswith("@taskevents.local>")
    assert COMPOSER.message_id(one.event_id, Channel.EMAIL) == first.message_id


@pytest.mark.parametrize(
    ("address", "plausible"),
    [
        ("ada@example.com", True),
        ("a.b+tag@sub.example.org", True),
        ("root@localhost", True),
        ("ada", False),
        ("ada@", False),
        ("Ada <ada@example.com>", False),
        ("a@b.c, d@e.f", False),
        ("a@b\nc", False),
    ],
)
def test_plausible_addresses(address: str, plausible: bool) -> None:
    assert is_plausible_address(address) is plausible


def test_the_smtp_message_has_both_parts_and_the_tracing_headers() -> None:
    mailer = SmtpMailer(host="127.0.0.1", port=1025, mail_from="taskevents <noreply@x.test>")
    one = event()
    email = COMPOSER.compose(one, "ada@example.com")

    parsed = message_from_bytes(bytes(mailer.message(email)), policy=policy.default)

    assert parsed["To"] == "ada@example.com"
    assert parsed["From"] == "taskevents <noreply@x.test>"
    assert parsed["Subject"] == "New task: Pay rent"
    assert parsed["Message-ID"] == email.message_id
    assert parsed[EVENT_ID_HEADER] == one.event_id
    assert parsed.get_content_type() == "multipart/alternative"
    text = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "Pay rent" in text.get_content()
    assert "<h2" in html.get_content()


def test_non_ascii_subjects_names_and_bodies_survive_the_smtp_message() -> None:
    mailer = SmtpMailer(host="127.0.0.1", port=1025, mail_from="Aufgaben Ä <noreply@x.test>")
    email = COMPOSER.compose(event(title="Zahnarzt für Müller 日本"), "ada@example.com")

    parsed = message_from_bytes(mailer.message(email).as_bytes(), policy=policy.default)

    assert parsed["Subject"] == "New task: Zahnarzt für Müller 日本"
    assert parsed["From"] == "Aufgaben Ä <noreply@x.test>"
    text = parsed.get_body(("plain",))
    assert text is not None
    assert "Zahnarzt für Müller 日本" in text.get_content()


def test_settings_read_event_types_as_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_EVENT_TYPES", "task.created, task.updated")
    monkeypatch.setenv("APP_PORT", "9001")

    settings = Settings()

    assert settings.event_types == frozenset({"task.created", "task.updated"})
    assert settings.port == 9001


def test_settings_default_to_the_design() -> None:
    settings = Settings()

    assert settings.port == 8001
    assert settings.event_types == frozenset(
        {"task.created", "task.completed", "task.recurring.triggered"}
    )
    assert (settings.smtp_host, settings.smtp_port) == ("127.0.0.1", 1025)


def test_a_claim_ttl_shorter_than_a_send_is_refused() -> None:
    with pytest.raises(ValidationError, match="CLAIM_TTL"):
        Settings(claim_ttl_seconds=5, smtp_timeout_seconds=10)


def test_placeholder_smtp_password_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="smtp_password"):
        Settings(
            environment="production",
            secret_store="",
            smtp_username="mailer",
            smtp_password="changeme",
        )
