"""Schedules and their arithmetic: when a cron expression (in an IANA time zone) or a fixed
interval fires next, what to do with a due occurrence, and the id of the event it
publishes. Pure: no I/O, no clock (callers pass `now`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

# Never change: ids derived from it must stay the same across versions and replicas.
OCCURRENCE_EVENT_ID_NAMESPACE = uuid.UUID("9b02ba35-36b4-4dde-8b39-dbfee2495cf2")
MAX_INTERVAL_SECONDS = 2**31 - 1  # the column is a Postgres integer
_ONE_MICROSECOND = timedelta(microseconds=1)
# Any date works: a 5-field cron has no year, so one that ever fires fires within 8 years.
_NEVER_FIRES_PROBE = datetime(2000, 1, 1, tzinfo=UTC)
_CRONTAB_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class InvalidScheduleError(ValueError):
    """A cron expression, time zone, interval or recurrence that cannot be scheduled."""


@dataclass(frozen=True, slots=True)
class CronRule:
    expression: str
    timezone: str
    # APScheduler matches the fields on the local wall clock, in UTC (a calendar without
    # daylight saving); zoneinfo then turns each wall time into an instant. APScheduler's
    # own time-zone arithmetic repeats or goes backwards in the autumn overlap (3.11.3).
    _wall_clock: CronTrigger = field(repr=False, compare=False)
    _zone: ZoneInfo = field(repr=False, compare=False)

    def next_after(
        self, previous: datetime, *, not_before: datetime | None = None
    ) -> datetime | None:
        """The first occurrence strictly after `previous` (and after `not_before`), in UTC.

        Daylight saving: a wall time skipped in spring fires as if the clock had not been
        put forward (02:30 CET, i.e. 03:30 CEST); a wall time that happens twice in autumn
        fires once, the first time. None when the expression never matches again."""
        after = max(previous, not_before) if not_before is not None else previous
        after_utc = after.astimezone(UTC)
        cursor = after_utc.astimezone(self._zone).replace(tzinfo=UTC, fold=0)
        while True:
            wall: datetime | None = self._wall_clock.get_next_fire_time(
                None, cursor + _ONE_MICROSECOND
            )
            if wall is None:
                return None
            instant = wall.replace(tzinfo=self._zone, fold=0).astimezone(UTC)
            if instant > after_utc:
                return instant
            # A wall time in the second pass of an autumn overlap: it already fired.
            cursor = wall


@dataclass(frozen=True, slots=True)
class IntervalRule:
    seconds: int
    timezone: str = "UTC"

    def next_after(self, previous: datetime, *, not_before: datetime | None = None) -> datetime:
        """`previous` plus whole intervals: the first such instant after `not_before`."""
        step = timedelta(seconds=self.seconds)
        following = previous + step
        if not_before is not None and following <= not_before:
            following = previous + ((not_before - previous) // step + 1) * step
        return following.astimezone(UTC)


Rule = CronRule | IntervalRule


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')"
        ) from None


def cron_rule(expression: str, timezone: str = "UTC") -> CronRule:
    """A rule from a standard 5-field crontab expression: minute hour day-of-month month
    day-of-week, where day-of-week 0 and 7 are Sunday."""
    tz = zone(timezone)
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidScheduleError(
            f"invalid cron expression {expression!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    if not fields[2].startswith("*") and not fields[4].startswith("*"):
        # cron fires when either day field matches, APScheduler only when both do.
        raise InvalidScheduleError(
            f"invalid cron expression {expression!r}: restrict day-of-month or day-of-week, "
            "not both"
        )
    fields[4] = _weekdays_by_name(fields[4], expression)
    try:
        wall_clock = CronTrigger.from_crontab(" ".join(fields), timezone=UTC)
    except ValueError as error:
        raise InvalidScheduleError(f"invalid cron expression {expression!r}: {error}") from None
    rule = CronRule(" ".join(expression.split()), timezone, wall_clock, tz)
    if rule.next_after(_NEVER_FIRES_PROBE) is None:
        raise InvalidScheduleError(f"cron expression {expression!r} never fires")
    return rule


def interval_rule(seconds: int, timezone: str = "UTC") -> IntervalRule:
    zone(timezone)
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise InvalidScheduleError(f"interval_seconds must be an integer, not {seconds!r}")
    if not 1 <= seconds <= MAX_INTERVAL_SECONDS:
        raise InvalidScheduleError(
            f"interval_seconds must be between 1 and {MAX_INTERVAL_SECONDS}, not {seconds}"
        )
    return IntervalRule(seconds, timezone)


def rule_from_fields(
    *, cron: str | None, interval_seconds: int | None, timezone: str = "UTC"
) -> Rule:
    if (cron is None) == (interval_seconds is None):
        raise InvalidScheduleError("give exactly one of cron and interval_seconds")
    if cron is not None:
        return cron_rule(cron, timezone)
    assert interval_seconds is not None
    return interval_rule(interval_seconds, timezone)


def rule_from_recurrence(recurrence: Any) -> Rule:
    """The rule in a task event's `payload.recurrence`: {"cron": "...", "timezone": "..."}
    or {"interval_seconds": N} (timezone optional, default UTC)."""
    if not isinstance(recurrence, Mapping):
        raise InvalidScheduleError(f"recurrence must be an object, not {type(recurrence).__name__}")
    unknown = sorted(set(recurrence) - {"cron", "interval_seconds", "timezone"})
    if unknown:
        raise InvalidScheduleError("recurrence has unknown fields: " + ", ".join(unknown))
    cron = recurrence.get("cron")
    timezone = recurrence.get("timezone", "UTC")
    if cron is not None and not isinstance(cron, str):
        raise InvalidScheduleError(f"recurrence.cron must be a string, not {cron!r}")
    if not isinstance(timezone, str):
        raise InvalidScheduleError(f"recurrence.timezone must be a string, not {timezone!r}")
    return rule_from_fields(
        cron=cron, interval_seconds=recurrence.get("interval_seconds"), timezone=timezone
    )


def first_occurrence(rule: Rule, now: datetime) -> datetime:
    """When a schedule made at `now` fires first. Interval schedules run on whole seconds
    from the creation time, so every occurrence has a short canonical form."""
    if isinstance(rule, IntervalRule):
        start = now.astimezone(UTC)
        if start.microsecond:
            start = start.replace(microsecond=0) + timedelta(seconds=1)
        return rule.next_after(start)
    following = rule.next_after(now)
    if following is None:  # cron_rule() refuses such rules
        raise InvalidScheduleError(f"cron expression {rule.expression!r} never fires")
    return following


@dataclass(frozen=True, slots=True)
class DueOccurrence:
    """What to do with an occurrence that is due: publish it or not (missed by more than
    the grace period), and when the schedule fires next (None: never again)."""

    occurrence: datetime
    publish: bool
    next_fire_at: datetime | None


def plan_due_occurrence(
    rule: Rule, occurrence: datetime, *, now: datetime, grace: timedelta
) -> DueOccurrence:
    """A due occurrence is published unless it is older than `grace`; a stale one is
    skipped together with every later one that is stale too, and the schedule moves on to
    the first occurrence still within the grace period (which is then due at once)."""
    horizon = now - grace
    if occurrence < horizon:
        return DueOccurrence(occurrence, False, rule.next_after(occurrence, not_before=horizon))
    return DueOccurrence(occurrence, True, rule.next_after(occurrence))


def occurrence_iso(occurrence: datetime) -> str:
    """The canonical text of an occurrence: UTC, 'Z', microseconds only when there are any."""
    utc = occurrence.astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def occurrence_event_id(schedule_id: uuid.UUID, occurrence: datetime) -> str:
    """The event id of one occurrence: every replica, and every retry, derives the same."""
    name = f"{schedule_id}/{occurrence_iso(occurrence)}"
    return str(uuid.uuid5(OCCURRENCE_EVENT_ID_NAMESPACE, name))


@dataclass(frozen=True, slots=True)
class NewSchedule:
    task_id: str
    user_id: str
    rule: Rule
    payload: Mapping[str, Any]
    next_fire_at: datetime


@dataclass(frozen=True, slots=True)
class Schedule:
    id: uuid.UUID
    task_id: str
    user_id: str
    rule: Rule
    payload: Mapping[str, Any]
    next_fire_at: datetime
    last_fired_at: datetime | None
    fire_count: int
    active: bool
    created_at: datetime
    updated_at: datetime


def _weekdays_by_name(day_of_week: str, expression: str) -> str:
    """Crontab numbers Sunday 0 (and 7), APScheduler 3 Monday 0: spell the days out."""
    if day_of_week == "*":
        return day_of_week
    days: set[int] = set()
    for part in day_of_week.split(","):
        base, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if base == "*":
                first, last = 0, 6
            elif "-" in base:
                first_text, last_text = base.split("-", 1)
                first, last = _weekday(first_text), _weekday(last_text)
            else:
                first = _weekday(base)
                last = 6 if step_text else first
        except ValueError:
            raise InvalidScheduleError(
                f"invalid cron expression {expression!r}: day-of-week {day_of_week!r} is not "
                "0-7 (Sunday 0 or 7), sun-sat, ranges, lists or steps of these"
            ) from None
        if step < 1 or first > last:
            raise InvalidScheduleError(
                f"invalid cron expression {expression!r}: bad day-of-week part {part!r}"
            )
        days.update(day % 7 for day in range(first, last + 1, step))
    return ",".join(_CRONTAB_WEEKDAYS[day] for day in sorted(days))


def _weekday(text: str) -> int:
    lowered = text.strip().lower()
    if lowered in _CRONTAB_WEEKDAYS:
        return _CRONTAB_WEEKDAYS.index(lowered)
    number = int(lowered)
    if not 0 <= number <= 7:
        raise ValueError(text)
    return number
