"""Schedules and their arithmetic: when a cron expression (in an IANA time zone), a fixed
interval or a completion makes a schedule fire, what a claim does with the occurrences that
are due (publish, coalesce, skip beyond the grace period), and the ids of the events.
Pure: no I/O, no clock (callers pass `now`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

# Never change: ids derived from it must stay the same across versions and replicas.
OCCURRENCE_EVENT_ID_NAMESPACE = uuid.UUID("9b02ba35-36b4-4dde-8b39-dbfee2495cf2")
MAX_INTERVAL_SECONDS = 2**31 - 1  # the column is a Postgres integer
SECONDS_PER_DAY = 86_400
MAX_AFTER_COMPLETION_DAYS = 3660
# A claim publishes at most this many occurrences of one schedule (catching up after an
# outage); the rest stay due and the next round of claiming takes them.
MAX_OCCURRENCES_PER_CLAIM = 1000
# Occurrences missed beyond the grace period are counted up to this many; a longer run is
# recorded with its first occurrence and no count.
MAX_COUNTED_MISSED = 10_000
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


@dataclass(frozen=True, slots=True)
class AfterCompletionRule:
    """A recurrence of the kind "N days after completion": one occurrence `seconds` after
    each `task.completed`, and nothing in between."""

    seconds: float
    timezone: str = "UTC"

    @property
    def days(self) -> float:
        return self.seconds / SECONDS_PER_DAY

    def next_after(self, previous: datetime, *, not_before: datetime | None = None) -> None:
        return None  # the next occurrence comes with the next completion

    def after_completion(self, completed_at: datetime) -> datetime:
        return (completed_at + timedelta(seconds=self.seconds)).astimezone(UTC)


Rule = CronRule | IntervalRule | AfterCompletionRule


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


def after_completion_rule(days: float, timezone: str = "UTC") -> AfterCompletionRule:
    zone(timezone)
    if isinstance(days, bool) or not isinstance(days, int | float):
        raise InvalidScheduleError(f"after_completion_days must be a number, not {days!r}")
    if not 0 < days <= MAX_AFTER_COMPLETION_DAYS:
        raise InvalidScheduleError(
            f"after_completion_days must be above 0 and at most {MAX_AFTER_COMPLETION_DAYS}, "
            f"not {days}"
        )
    return AfterCompletionRule(float(days) * SECONDS_PER_DAY, timezone)


def rule_from_fields(
    *,
    cron: str | None,
    interval_seconds: int | None,
    after_completion_days: float | None = None,
    timezone: str = "UTC",
) -> Rule:
    given = [v for v in (cron, interval_seconds, after_completion_days) if v is not None]
    if len(given) != 1:
        raise InvalidScheduleError(
            "give exactly one of cron, interval_seconds and after_completion_days"
        )
    if cron is not None:
        return cron_rule(cron, timezone)
    if interval_seconds is not None:
        return interval_rule(interval_seconds, timezone)
    assert after_completion_days is not None
    return after_completion_rule(after_completion_days, timezone)


def rule_fields(rule: Rule) -> dict[str, Any]:
    """The rule as the API and the table spell it."""
    return {
        "cron": rule.expression if isinstance(rule, CronRule) else None,
        "interval_seconds": rule.seconds if isinstance(rule, IntervalRule) else None,
        "after_completion_days": rule.days if isinstance(rule, AfterCompletionRule) else None,
        "timezone": rule.timezone,
    }


RECURRENCE_RULE_FIELDS = ("cron", "interval_seconds", "after_completion_days", "timezone")
RECURRENCE_OPTION_FIELDS = ("starts_at", "ends_at", "max_count", "coalesce_missed")


def rule_from_recurrence(recurrence: Any) -> Rule:
    """The rule in a task event's `payload.recurrence`: {"cron": "...", "timezone": "..."},
    {"interval_seconds": N} or {"after_completion_days": N} (timezone optional, default
    UTC), optionally with the fields `options_from_recurrence` reads."""
    if not isinstance(recurrence, Mapping):
        raise InvalidScheduleError(f"recurrence must be an object, not {type(recurrence).__name__}")
    unknown = sorted(set(recurrence) - {*RECURRENCE_RULE_FIELDS, *RECURRENCE_OPTION_FIELDS})
    if unknown:
        raise InvalidScheduleError("recurrence has unknown fields: " + ", ".join(unknown))
    cron = recurrence.get("cron")
    timezone = recurrence.get("timezone", "UTC")
    if cron is not None and not isinstance(cron, str):
        raise InvalidScheduleError(f"recurrence.cron must be a string, not {cron!r}")
    if not isinstance(timezone, str):
        raise InvalidScheduleError(f"recurrence.timezone must be a string, not {timezone!r}")
    return rule_from_fields(
        cron=cron,
        interval_seconds=recurrence.get("interval_seconds"),
        after_completion_days=recurrence.get("after_completion_days"),
        timezone=timezone,
    )


def options_from_recurrence(recurrence: Mapping[str, Any]) -> ScheduleOptions:
    """`starts_at` / `ends_at` (ISO 8601 with a zone), `max_count`, `coalesce_missed`."""
    bounds: dict[str, datetime | None] = {}
    for name in ("starts_at", "ends_at"):
        value = recurrence.get(name)
        if value is None:
            bounds[name] = None
            continue
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidScheduleError(
                f"recurrence.{name} is not an ISO 8601 time: {value!r}"
            ) from None
        if parsed.tzinfo is None:
            raise InvalidScheduleError(f"recurrence.{name} needs a time zone: {value!r}")
        bounds[name] = parsed.astimezone(UTC)
    max_count = recurrence.get("max_count")
    if max_count is not None and (isinstance(max_count, bool) or not isinstance(max_count, int)):
        raise InvalidScheduleError(f"recurrence.max_count must be an integer, not {max_count!r}")
    coalesce = recurrence.get("coalesce_missed", False)
    if not isinstance(coalesce, bool):
        raise InvalidScheduleError(
            f"recurrence.coalesce_missed must be true or false, not {coalesce!r}"
        )
    return schedule_options(
        starts_at=bounds["starts_at"],
        ends_at=bounds["ends_at"],
        max_count=max_count,
        coalesce_missed=coalesce,
    )


@dataclass(frozen=True, slots=True)
class ScheduleOptions:
    """When a schedule may fire (from `starts_at`, up to `ends_at`, at most `max_count`
    published occurrences) and what a run of missed occurrences becomes (one event with
    `coalesce_missed`)."""

    starts_at: datetime | None = None
    ends_at: datetime | None = None
    max_count: int | None = None
    coalesce_missed: bool = False

    def allows(self, occurrence: datetime) -> bool:
        return self.ends_at is None or occurrence <= self.ends_at

    def exhausted(self, fire_count: int) -> bool:
        return self.max_count is not None and fire_count >= self.max_count


def schedule_options(
    *,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    max_count: int | None = None,
    coalesce_missed: bool = False,
) -> ScheduleOptions:
    if max_count is not None and not 1 <= max_count <= MAX_INTERVAL_SECONDS:
        raise InvalidScheduleError(f"max_count must be at least 1, not {max_count}")
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise InvalidScheduleError(
            f"ends_at ({ends_at.isoformat()}) must be after starts_at ({starts_at.isoformat()})"
        )
    return ScheduleOptions(starts_at, ends_at, max_count, coalesce_missed)


def first_occurrence(
    rule: Rule, now: datetime, options: ScheduleOptions | None = None
) -> datetime | None:
    """When a schedule made (or changed) at `now` fires first; None when it does not
    (it ends before, or it waits for a completion). Interval schedules run on whole
    seconds from the creation time — or from `starts_at`, which is then the first
    occurrence."""
    options = options or ScheduleOptions()
    starts_at = options.starts_at
    following: datetime | None
    if isinstance(rule, AfterCompletionRule):
        return None
    if isinstance(rule, IntervalRule):
        if starts_at is not None:
            following = starts_at if starts_at > now else rule.next_after(starts_at, not_before=now)
        else:
            start = now.astimezone(UTC)
            if start.microsecond:
                start = start.replace(microsecond=0) + timedelta(seconds=1)
            following = rule.next_after(start)
    else:
        after = now
        if starts_at is not None and starts_at > now:
            after = starts_at - _ONE_MICROSECOND
        following = rule.next_after(after)
    if following is None or not options.allows(following):
        return None
    return following.astimezone(UTC)


def next_after_completion(
    rule: AfterCompletionRule, completed_at: datetime, options: ScheduleOptions, fire_count: int
) -> datetime | None:
    """The occurrence a completion schedules; None when the schedule is over."""
    occurrence = rule.after_completion(completed_at)
    if options.exhausted(fire_count) or not options.allows(occurrence):
        return None
    return occurrence


def resumed_next_fire_at(
    rule: Rule, next_fire_at: datetime | None, now: datetime, options: ScheduleOptions
) -> datetime | None:
    """The next occurrence after `now` on the schedule's own grid: a resumed schedule
    does not catch up what fell into its pause."""
    if isinstance(rule, AfterCompletionRule):
        return next_fire_at if next_fire_at is not None and next_fire_at > now else None
    if next_fire_at is None:
        return first_occurrence(rule, now, options)
    following = (
        next_fire_at if next_fire_at > now else rule.next_after(next_fire_at, not_before=now)
    )
    if following is None or not options.allows(following):
        return None
    return following


def upcoming(
    rule: Rule, next_fire_at: datetime | None, options: ScheduleOptions, fire_count: int, count: int
) -> list[datetime]:
    """The next `count` occurrences from `next_fire_at`, within the schedule's bounds."""
    found: list[datetime] = []
    cursor = next_fire_at
    left = None if options.max_count is None else options.max_count - fire_count
    while cursor is not None and len(found) < count and options.allows(cursor):
        if left is not None and len(found) >= left:
            break
        found.append(cursor)
        cursor = rule.next_after(cursor)
    return found


class MissedReason(StrEnum):
    BEYOND_GRACE = "beyond_grace"  # missed by more than the grace period: not published
    COALESCED = "coalesced"  # folded into the one event published for a run of missed ones


@dataclass(frozen=True, slots=True)
class MissedRun:
    """Consecutive occurrences of one schedule not published on their own. `last` and
    `count` are None when the run was too long to count."""

    reason: MissedReason
    first: datetime
    last: datetime | None
    count: int | None


@dataclass(frozen=True, slots=True)
class OccurrenceToPublish:
    occurrence: datetime
    coalesced: MissedRun | None = None  # the earlier occurrences this event stands for


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    """What a claim does with a due schedule: the occurrences it publishes, the runs it
    records as missed, and when the schedule fires next (None: at the next completion, or
    never again when `finished`)."""

    publish: tuple[OccurrenceToPublish, ...]
    missed: tuple[MissedRun, ...]
    next_fire_at: datetime | None
    finished: bool


def plan_claim(
    rule: Rule,
    occurrence: datetime,
    *,
    now: datetime,
    grace: timedelta,
    options: ScheduleOptions | None = None,
    fire_count: int = 0,
    limit: int = MAX_OCCURRENCES_PER_CLAIM,
) -> ClaimPlan:
    """Plan a due schedule whose next occurrence is `occurrence` (<= now).

    Occurrences older than `now - grace` (every replica was down) are skipped and recorded
    as one run. Those within the grace period are published, each on its own — or, with
    `coalesce_missed`, as one event for the latest, standing for the whole run."""
    options = options or ScheduleOptions()
    horizon = now - grace
    missed: list[MissedRun] = []
    cursor: datetime | None = occurrence
    if cursor is not None and cursor < horizon and options.allows(cursor):
        first, last, count = cursor, cursor, 0
        while cursor is not None and cursor < horizon and options.allows(cursor):
            if count == MAX_COUNTED_MISSED:
                cursor = rule.next_after(cursor, not_before=horizon - _ONE_MICROSECOND)
                missed.append(MissedRun(MissedReason.BEYOND_GRACE, first, None, None))
                break
            last, count = cursor, count + 1
            cursor = rule.next_after(cursor)
        else:
            missed.append(MissedRun(MissedReason.BEYOND_GRACE, first, last, count))
    due: list[datetime] = []
    while cursor is not None and cursor <= now and options.allows(cursor) and len(due) < limit:
        due.append(cursor)
        cursor = rule.next_after(cursor)
    if options.coalesce_missed and len(due) > 1:
        run = MissedRun(MissedReason.COALESCED, due[0], due[-2], len(due) - 1)
        publish = [OccurrenceToPublish(due[-1], run)]
        missed.append(run)
    else:
        publish = [OccurrenceToPublish(d) for d in due]
    if options.max_count is not None:
        left = max(options.max_count - fire_count, 0)
        if len(publish) >= left:
            return ClaimPlan(tuple(publish[:left]), tuple(missed), None, True)
    if cursor is not None and not options.allows(cursor):
        cursor = None
    finished = cursor is None and not isinstance(rule, AfterCompletionRule)
    return ClaimPlan(tuple(publish), tuple(missed), cursor, finished)


def occurrence_iso(occurrence: datetime) -> str:
    """The canonical text of an occurrence: UTC, 'Z', microseconds only when there are any."""
    utc = occurrence.astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def occurrence_event_id(schedule_id: uuid.UUID, occurrence: datetime) -> str:
    """The event id of one occurrence: every replica, and every retry, derives the same."""
    name = f"{schedule_id}/{occurrence_iso(occurrence)}"
    return str(uuid.uuid5(OCCURRENCE_EVENT_ID_NAMESPACE, name))


def trigger_event_id(schedule_id: uuid.UUID, key: str) -> str:
    """The event id of a manual trigger. Its name has a `trigger/` segment where an
    occurrence's has a time, so it can never equal an occurrence's id; the same `key`
    (an idempotency key) gives the same id."""
    return str(uuid.uuid5(OCCURRENCE_EVENT_ID_NAMESPACE, f"{schedule_id}/trigger/{key}"))


@dataclass(frozen=True, slots=True)
class NewSchedule:
    task_id: str
    user_id: str
    rule: Rule
    payload: Mapping[str, Any]
    next_fire_at: datetime | None
    options: ScheduleOptions = ScheduleOptions()
    paused: bool = False
    cause: str | None = None  # the `traceparent` of what sets it (a task event, a request)


@dataclass(frozen=True, slots=True)
class Schedule:
    id: uuid.UUID
    task_id: str
    user_id: str
    rule: Rule
    payload: Mapping[str, Any]
    next_fire_at: datetime | None
    last_fired_at: datetime | None
    fire_count: int
    active: bool  # false once the schedule is over (ends_at passed, max_count reached)
    created_at: datetime
    updated_at: datetime
    options: ScheduleOptions = ScheduleOptions()
    paused: bool = False
    last_completed_at: datetime | None = None
    broken: str | None = None  # why it can no longer fire (its rule cannot be read)
    # The `traceparent` of what last set it: its triggered events' publishes link to it.
    cause: str | None = None


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


def reconcile(existing: Schedule, new: NewSchedule) -> tuple[datetime | None, bool]:
    """The next fire time, and whether the schedule is active, when a task event sets the
    schedule a task already has: an unchanged rule (and start) keeps its next fire time —
    so a redelivered event changes nothing — and a changed one starts afresh."""
    same = (
        existing.active
        and existing.rule == new.rule
        and existing.options.starts_at == new.options.starts_at
    )
    next_fire_at = existing.next_fire_at if same else new.next_fire_at
    if new.options.exhausted(existing.fire_count):
        return None, False
    if next_fire_at is not None and not new.options.allows(next_fire_at):
        return None, False
    return next_fire_at, next_fire_at is not None or isinstance(new.rule, AfterCompletionRule)
