"""A user's notification preferences, validated so that a bad value is a clear 422 at the
API and never a surprise at send time, and the quiet-hours arithmetic."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
_ADDRESS = re.compile(r"^[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+$")
EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+$")
ChannelName = Literal["email", "sms"]


def is_e164(phone: str) -> bool:
    return E164.fullmatch(phone) is not None


def is_plausible_address(address: str) -> bool:
    """A single bare address (no display name, no list); the SMTP server has the last word."""
    return len(address) <= 254 and _ADDRESS.fullmatch(address) is not None


class QuietHours(BaseModel):
    """A daily window in the user's time zone; it may span midnight (22:00 → 07:00)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = Field(description="Local time the quiet window starts, HH:MM.")
    end: time = Field(description="Local time it ends, HH:MM (may be earlier than start).")

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("give a local time without a UTC offset (HH:MM)")
        return value.replace(microsecond=0)

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet_hours start and end must differ")
        return self

    def end_after(self, moment: datetime, zone: ZoneInfo) -> datetime | None:
        """When the window containing `moment` ends (aware, UTC-comparable), or None when
        `moment` is outside the window."""
        local = moment.astimezone(zone)
        now = local.time().replace(tzinfo=None)
        if self.start < self.end:
            inside = self.start <= now < self.end
            end_day = local.date()
        else:  # spans midnight
            inside = now >= self.start or now < self.end
            end_day = local.date() + timedelta(days=1) if now >= self.start else local.date()
        if not inside:
            return None
        # fold=0 and a round trip through UTC make a DST gap or overlap resolve forward.
        naive_end = datetime.combine(end_day, self.end)
        return naive_end.replace(tzinfo=zone).astimezone(ZoneInfo("UTC"))


NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=254)]


class Preferences(BaseModel):
    """Stored as given; `PUT` replaces the whole record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: NonEmpty | None = Field(default=None, examples=["ada@example.com"])
    phone: NonEmpty | None = Field(
        default=None, description="E.164: +, country code, number.", examples=["+4915112345678"]
    )
    channels: frozenset[ChannelName] = Field(
        default=frozenset({"email"}), description="Channels to notify on: email, sms."
    )
    muted_event_types: frozenset[str] = Field(
        default=frozenset(), description="Event types that never notify this user."
    )
    time_zone: str = Field(
        default="UTC", description="IANA time zone for due dates and quiet hours."
    )
    quiet_hours: QuietHours | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not is_plausible_address(value):
            raise ValueError("email must be a single address like ada@example.com")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        compact = re.sub(r"[\s().-]", "", value)
        if not is_e164(compact):
            raise ValueError(
                "phone must be in E.164 form: '+', country code and number, at most 15 digits "
                "(e.g. +4915112345678)"
            )
        return compact

    @field_validator("muted_event_types")
    @classmethod
    def _event_types(cls, value: frozenset[str]) -> frozenset[str]:
        bad = sorted(t for t in value if not EVENT_TYPE.fullmatch(t))
        if bad:
            raise ValueError(f"not event type names (like task.updated): {', '.join(bad)}")
        return value

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str) -> str:
        value = value.strip()
        if value not in _zones():
            raise ValueError(
                f"unknown time zone {value[:64]!r}: use an IANA name like Europe/Berlin"
            )
        return value

    @property
    def zone(self) -> ZoneInfo:
        return zone_or_utc(self.time_zone)

    def quiet_until(self, moment: datetime) -> datetime | None:
        if self.quiet_hours is None:
            return None
        return self.quiet_hours.end_after(moment, self.zone)


_ZONES: frozenset[str] | None = None


def _zones() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    return _ZONES


def zone_or_utc(name: object) -> ZoneInfo:
    if isinstance(name, str) and name in _zones():
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo("UTC")
