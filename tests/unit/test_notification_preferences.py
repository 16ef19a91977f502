from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr, ValidationError

from notification_service.adapters.sms import NoSmsSender
from notification_service.bootstrap import policy_of, secrets_of, sms_sender
from notification_service.ports import DeliveryRejectedError, Sms
from notification_service.preferences import Preferences, QuietHours
from notification_service.settings import Settings
from notification_service.sms import SmsComposer, fits_one_segment, is_gsm7, sms_length
from taskevents.events import TaskEvent

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "until"),
    [
        ("2026-11-23T21:30:00", "2026-11-24T06:00:00"),  # 22:30 Berlin → 07:00 next day
        ("2026-11-24T05:59:00", "2026-11-24T06:00:00"),  # 06:59 Berlin, same morning
        ("2026-11-24T06:00:00", None),  # 07:00 Berlin: the window is over
        ("2026-11-24T12:00:00", None),
    ],
)
def test_quiet_hours_across_midnight(moment: str, until: str | None) -> None:
    quiet = QuietHours.model_validate({"start": "22:00", "end": "07:00"})

    end = quiet.end_after(at(moment), BERLIN)

    assert end == (at(until) if until else None)


def test_quiet_hours_within_one_day_and_across_a_dst_change() -> None:
    lunch = QuietHours.model_validate({"start": "12:00", "end": "13:30"})
    assert lunch.end_after(at("2026-07-01T10:15:00"), BERLIN) == at("2026-07-01T11:30:00")
    assert lunch.end_after(at("2026-07-01T11:30:00"), BERLIN) is None
    # The night Berlin goes from CEST to CET (25 Oct 2026): 07:00 local is 06:00 UTC.
    night = QuietHours.model_validate({"start": "22:00", "end": "07:00"})
    assert night.end_after(at("2026-10-24T21:00:00"), BERLIN) == at("2026-10-25T06:00:00")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("phone", "015112345678", "E.164"),
        ("phone", "+0123456789", "E.164"),
        ("time_zone", "Europe/Atlantis", "IANA"),
        ("email", "Ada <ada@example.com>", "single address"),
        ("channels", ["fax"], "'email' or 'sms'"),
        ("muted_event_types", ["created"], "event type"),
        ("quiet_hours", {"start": "07:00", "end": "07:00"}, "must differ"),
        ("quiet_hours", {"start": "25:00", "end": "07:00"}, "time"),
    ],
)
def test_invalid_preferences_say_what_is_wrong(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Preferences.model_validate({field: value})


def test_phone_numbers_are_stored_compact() -> None:
    assert Preferences(phone="+49 (151) 123-45678").phone == "+4915112345678"


def test_defaults_are_email_only_in_utc() -> None:
    preferences = Preferences()
    assert preferences.channels == frozenset({"email"})
    assert preferences.zone == ZoneInfo("UTC")
    assert preferences.quiet_until(at("2026-01-01T03:00:00")) is None


TEXTS = SmsComposer(link_base_url="https://tasks.example.com")


def created(title: str, **payload: object) -> TaskEvent:
    return TaskEvent.create(
        "task.created", task_id="t-1", user_id="u", payload={"title": title, **payload}
    )


def test_a_short_sms_keeps_everything() -> None:
    sms = TEXTS.compose(created("Pay rent", due_at="2026-12-01T09:00:00Z"), "+1555", BERLIN)

    assert (
        sms.body == "New task: Pay rent, due 01 Dec 10:00 CET https://tasks.example.com/?task=t-1"
    )


def test_a_long_gsm_sms_drops_the_link_then_shortens_the_title() -> None:
    sms = TEXTS.compose(created("Renew the passport before the trip " * 8), "+1555")

    assert is_gsm7(sms.body)
    assert sms_length(sms.body)[0] <= 160
    assert sms.body.startswith("New task: Renew the passport")
    assert sms.body.endswith("...")
    assert "https://" not in sms.body


def test_a_non_gsm_sms_fits_70_ucs2_units() -> None:
    sms = TEXTS.compose(created("Купить молоко и хлеб по дороге домой " * 3), "+1555")

    assert not is_gsm7(sms.body)
    assert fits_one_segment(sms.body)
    assert len(sms.body) <= 70
    assert sms.body.endswith("…")


def test_gsm_extension_characters_count_twice() -> None:
    assert sms_length("{}") == (4, 160)
    assert sms_length("€") == (2, 160)
    assert sms_length("日本") == (2, 70)
    assert sms_length("🙂") == (2, 70)


def test_settings_check_the_sms_provider() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_URL"):
        Settings(sms_provider="webhook")
    with pytest.raises(ValidationError, match="TWILIO_ACCOUNT_SID"):
        Settings(sms_provider="twilio", twilio_account_sid="AC1")
    twilio = Settings(sms_provider="twilio", twilio_account_sid="AC1", twilio_from="+1500")
    assert str(twilio.twilio_base_url) == "https://api.twilio.com/"


PRODUCTION: dict[str, Any] = {
    "environment": "production",
    "jwt_secret": SecretStr("k" * 40),
    "database_url": SecretStr("postgresql://u:a-real-password@db:5432/x"),
}


def test_the_sms_channel_is_off_by_default_outside_development() -> None:
    assert Settings().sms_provider == "log"
    production = Settings(**PRODUCTION)
    assert production.sms_provider == "none"
    assert not production.sms_channel_on
    assert policy_of(production).sms_on is False
    assert isinstance(sms_sender(production, secrets_of(production)), NoSmsSender)
    assert policy_of(Settings()).sms_on is True


def test_the_log_sms_provider_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="NOTIFY_SMS_PROVIDER=log"):
        Settings(**PRODUCTION, sms_provider="log")
    assert Settings(sms_provider="log").sms_provider == "log"
    assert Settings(**PRODUCTION, sms_provider="none").sms_provider == "none"


def test_the_log_sms_provider_from_the_environment_is_refused_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKEVENTS_ENV", "production")
    monkeypatch.setenv("NOTIFY_SMS_PROVIDER", "log")

    with pytest.raises(ValidationError, match="refusing to start in production"):
        Settings(**{k: v for k, v in PRODUCTION.items() if k != "environment"})


async def test_the_none_sms_sender_refuses_what_still_reaches_it() -> None:
    with pytest.raises(DeliveryRejectedError, match="SMS is off"):
        await NoSmsSender().send(Sms("+1555", "hi", "m-1", "e-1"))


def test_settings_read_lists_and_the_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_DEFAULT_CHANNELS", "email, sms")
    monkeypatch.setenv("NOTIFY_RATE_LIMIT_COUNT", "0")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:p@db:5432/x")

    settings = Settings()

    assert settings.default_channels == frozenset({"email", "sms"})
    assert settings.rate_limit_count == 0
    assert settings.database_url.get_secret_value() == "postgresql://u:p@db:5432/x"


def test_the_default_rate_limit_is_for_people() -> None:
    settings = Settings()
    assert (settings.rate_limit_count, settings.rate_limit_window_seconds) == (10, 600.0)
