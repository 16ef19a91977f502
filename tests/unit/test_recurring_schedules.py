from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from recurring_task_service.schedules import (
    IntervalRule,
    InvalidScheduleError,
    Rule,
    cron_rule,
    first_occurrence,
    interval_rule,
    occurrence_event_id,
    occurrence_iso,
    plan_due_occurrence,
    rule_from_fields,
    rule_from_recurrence,
)

BERLIN = ZoneInfo("Europe/Berlin")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def occurrences(rule: Rule, after: datetime, count: int) -> list[datetime]:
    found = []
    for _ in range(count):
        following = rule.next_after(after)
        assert following is not None
        found.append(following)
        after = following
    return found


# --- cron across daylight saving (Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST,
# 2026-10-25 03:00 CEST -> 02:00 CET)


def test_daily_cron_keeps_its_local_time_across_the_march_transition() -> None:
    rule = cron_rule("0 9 * * *", "Europe/Berlin")

    assert occurrences(rule, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 8),  # 09:00 CET
        utc(2026, 3, 29, 7),  # 09:00 CEST: the first day of summer time
        utc(2026, 3, 30, 7),
    ]


def test_daily_cron_keeps_its_local_time_across_the_october_transition() -> None:
    rule = cron_rule("0 9 * * *", "Europe/Berlin")

    assert occurrences(rule, utc(2026, 10, 24, 0), 2) == [
        utc(2026, 10, 24, 7),  # 09:00 CEST
        utc(2026, 10, 25, 8),  # 09:00 CET
    ]


def test_a_time_in_the_spring_gap_fires_once_an_hour_later() -> None:
    rule = cron_rule("30 2 * * *", "Europe/Berlin")  # 02:30 does not exist on 2026-03-29

    assert occurrences(rule, utc(2026, 3, 28, 12), 2) == [
        utc(2026, 3, 29, 1, 30),  # 03:30 CEST
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
    ]


def test_a_time_that_happens_twice_in_autumn_fires_once() -> None:
    rule = cron_rule("30 2 * * *", "Europe/Berlin")  # 02:30 happens twice on 2026-10-25

    assert occurrences(rule, utc(2026, 10, 24, 12), 2) == [
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST)
        utc(2026, 10, 26, 1, 30),  # the next day's 02:30 (CET)
    ]


def test_an_hourly_cron_never_goes_back_in_the_autumn_overlap() -> None:
    rule = cron_rule("*/30 1-3 * * *", "Europe/Berlin")

    fired = occurrences(rule, utc(2026, 10, 24, 22), 7)

    assert fired == sorted(set(fired))
    assert fired == [
        utc(2026, 10, 24, 23, 0),  # 01:00 CEST
        utc(2026, 10, 24, 23, 30),
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 30),  # 02:30 CEST; the repeated 02:00 and 02:30 CET do not fire
        utc(2026, 10, 25, 2, 0),  # 03:00 CET
        utc(2026, 10, 25, 2, 30),
        utc(2026, 10, 26, 0, 0),  # 01:00 CET
    ]


def test_from_inside_the_autumn_overlap_the_next_occurrence_is_later() -> None:
    rule = cron_rule("30 2 * * *", "Europe/Berlin")

    # 02:10 CET, the second pass; the first 02:30 is already gone.
    assert rule.next_after(utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 26, 1, 30)


def test_the_next_occurrence_is_strictly_after_the_given_time() -> None:
    rule = cron_rule("0 * * * *", "UTC")

    assert rule.next_after(utc(2026, 1, 1, 10)) == utc(2026, 1, 1, 11)
    assert rule.next_after(utc(2026, 1, 1, 10), not_before=utc(2026, 1, 1, 12, 5)) == utc(
        2026, 1, 1, 13
    )


@pytest.mark.parametrize(
    ("day_of_week", "after", "expected_weekday"),
    [
        ("0", utc(2026, 3, 2), "Sunday"),  # Monday 2026-03-02
        ("7", utc(2026, 3, 2), "Sunday"),
        ("1", utc(2026, 3, 3), "Monday"),
        ("mon", utc(2026, 3, 3), "Monday"),
        ("6", utc(2026, 3, 2), "Saturday"),
        ("0-1", utc(2026, 3, 2, 10), "Sunday"),
    ],
)
def test_day_of_week_numbers_follow_crontab(
    day_of_week: str, after: datetime, expected_weekday: str
) -> None:
    rule = cron_rule(f"0 9 * * {day_of_week}", "UTC")

    following = rule.next_after(after)

    assert following is not None
    assert following.strftime("%A") == expected_weekday


def test_weekdays_range() -> None:
    rule = cron_rule("0 9 * * 1-5", "UTC")

    days = [d.strftime("%a") for d in occurrences(rule, utc(2026, 3, 6), 6)]

    assert days == ["Fri", "Mon", "Tue", "Wed", "Thu", "Fri"]


@pytest.mark.parametrize(
    ("expression", "timezone", "message"),
    [
        ("* * * *", "UTC", "expected 5 fields"),
        ("0 9 * * * *", "UTC", "expected 5 fields"),
        ("61 * * * *", "UTC", "invalid cron expression"),
        ("0 9 * * 8", "UTC", "day-of-week"),
        ("0 9 1 * 1", "UTC", "not both"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 9 * * *", "Mars/Olympus_Mons", "unknown time zone"),
        ("0 9 * * *", "../../etc/passwd", "unknown time zone"),
    ],
)
def test_invalid_cron_or_zone_is_refused_with_a_reason(
    expression: str, timezone: str, message: str
) -> None:
    with pytest.raises(InvalidScheduleError, match=message):
        cron_rule(expression, timezone)


# --- intervals


def test_interval_occurrences_follow_each_other_by_the_interval() -> None:
    rule = interval_rule(90)

    assert occurrences(rule, utc(2026, 1, 1), 2) == [
        utc(2026, 1, 1, 0, 1, 30),
        utc(2026, 1, 1, 0, 3, 0),
    ]


def test_interval_ignores_daylight_saving() -> None:
    rule = interval_rule(3600, "Europe/Berlin")

    assert rule.next_after(utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1, 30)


def test_interval_after_a_gap_stays_on_its_grid() -> None:
    rule = interval_rule(10)

    assert rule.next_after(utc(2026, 1, 1), not_before=utc(2026, 1, 1, 0, 0, 35)) == utc(
        2026, 1, 1, 0, 0, 40
    )
    assert rule.next_after(utc(2026, 1, 1), not_before=utc(2026, 1, 1, 0, 0, 40)) == utc(
        2026, 1, 1, 0, 0, 50
    )


def test_interval_schedules_start_on_a_whole_second() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC)

    assert first_occurrence(interval_rule(2), now) == utc(2026, 1, 1, 12, 0, 3)


def test_cron_schedules_start_at_the_next_match() -> None:
    now = utc(2026, 1, 1, 12, 0)

    assert first_occurrence(cron_rule("0 12 * * *"), now) == utc(2026, 1, 2, 12, 0)


@pytest.mark.parametrize("seconds", [0, -5, 2**31, True, 1.5])
def test_invalid_intervals_are_refused(seconds: int) -> None:
    with pytest.raises(InvalidScheduleError, match="interval_seconds"):
        interval_rule(seconds)


def test_exactly_one_of_cron_and_interval() -> None:
    with pytest.raises(InvalidScheduleError, match="exactly one"):
        rule_from_fields(cron="* * * * *", interval_seconds=5)
    with pytest.raises(InvalidScheduleError, match="exactly one"):
        rule_from_fields(cron=None, interval_seconds=None)


# --- recurrence in task events


def test_recurrence_with_cron_and_zone() -> None:
    rule = rule_from_recurrence({"cron": "0 9 1 * *", "timezone": "Europe/Berlin"})

    assert rule == cron_rule("0 9 1 * *", "Europe/Berlin")


def test_recurrence_with_an_interval_defaults_to_utc() -> None:
    assert rule_from_recurrence({"interval_seconds": 60}) == IntervalRule(60, "UTC")


@pytest.mark.parametrize(
    ("recurrence", "message"),
    [
        ("0 9 * * *", "must be an object"),
        ({}, "exactly one"),
        ({"cron": "0 9 * * *", "interval_seconds": 5}, "exactly one"),
        ({"cron": 9}, "must be a string"),
        ({"cron": "0 9 * * *", "timezone": "Nowhere/Town"}, "unknown time zone"),
        ({"interval_seconds": "60"}, "must be an integer"),
        ({"every": "day"}, "unknown fields: every"),
    ],
)
def test_invalid_recurrence_is_refused_with_a_reason(recurrence: object, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match=message):
        rule_from_recurrence(recurrence)


# --- due occurrences


def test_a_due_occurrence_is_published_and_the_schedule_moves_on() -> None:
    plan = plan_due_occurrence(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 12, 0, 1),
        grace=timedelta(minutes=5),
    )

    assert plan.publish
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 1)


def test_a_late_occurrence_within_the_grace_period_is_still_published() -> None:
    plan = plan_due_occurrence(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 12, 4),
        grace=timedelta(minutes=5),
    )

    assert plan.publish
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 1)  # the next missed one is caught up too


def test_occurrences_older_than_the_grace_period_are_skipped() -> None:
    plan = plan_due_occurrence(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 13),
        grace=timedelta(minutes=5),
    )

    assert not plan.publish
    # The first occurrence still within the grace period, due at once.
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 56)


# --- event ids


def test_occurrence_event_id_is_deterministic() -> None:
    schedule_id = uuid.UUID("0b9c8a52-5ad4-4a7e-9d8e-5f8d1f7a2c11")
    occurrence = utc(2026, 3, 29, 7)

    first = occurrence_event_id(schedule_id, occurrence)

    assert first == occurrence_event_id(schedule_id, occurrence)
    assert first == occurrence_event_id(schedule_id, occurrence.astimezone(BERLIN))
    assert uuid.UUID(first).version == 5


def test_occurrence_event_id_differs_per_occurrence_and_schedule() -> None:
    schedule_id = uuid.UUID("0b9c8a52-5ad4-4a7e-9d8e-5f8d1f7a2c11")
    other_schedule = uuid.UUID("7e4d2a90-1c3b-4f5e-8a6d-9b0c1d2e3f40")

    ids = {
        occurrence_event_id(schedule_id, utc(2026, 1, 1, 9)),
        occurrence_event_id(schedule_id, utc(2026, 1, 1, 9, 0, 2)),
        occurrence_event_id(other_schedule, utc(2026, 1, 1, 9)),
    }

    assert len(ids) == 3


def test_occurrence_event_id_is_pinned() -> None:
    # Changing the derivation would make replicas of two versions publish one occurrence
    # under two ids.
    schedule_id = uuid.UUID("0b9c8a52-5ad4-4a7e-9d8e-5f8d1f7a2c11")

    assert occurrence_iso(utc(2026, 1, 1, 9)) == "2026-01-01T09:00:00Z"
    assert occurrence_event_id(schedule_id, utc(2026, 1, 1, 9)) == str(
        uuid.uuid5(
            uuid.UUID("9b02ba35-36b4-4dde-8b39-dbfee2495cf2"),
            "0b9c8a52-5ad4-4a7e-9d8e-5f8d1f7a2c11/2026-01-01T09:00:00Z",
        )
    )
