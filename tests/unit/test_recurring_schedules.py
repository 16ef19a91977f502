from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from recurring_task_service.schedules import (
    AfterCompletionRule,
    IntervalRule,
    InvalidScheduleError,
    MissedReason,
    MissedRun,
    NewSchedule,
    Rule,
    Schedule,
    ScheduleOptions,
    after_completion_rule,
    cron_rule,
    first_occurrence,
    interval_rule,
    next_after_completion,
    occurrence_event_id,
    occurrence_iso,
    options_from_recurrence,
    plan_claim,
    reconcile,
    resumed_next_fire_at,
    rule_from_fields,
    rule_from_recurrence,
    schedule_options,
    trigger_event_id,
    upcoming,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


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
        rule_from_fields(cron=None, interval_seconds=5, after_completion_days=1)
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


# --- due occurrences: what a claim publishes, skips and coalesces

GRACE = timedelta(minutes=5)


def test_a_due_occurrence_is_published_and_the_schedule_moves_on() -> None:
    plan = plan_claim(
        interval_rule(60), utc(2026, 1, 1, 12), now=utc(2026, 1, 1, 12, 0, 1), grace=GRACE
    )

    assert [p.occurrence for p in plan.publish] == [utc(2026, 1, 1, 12)]
    assert plan.missed == ()
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 1)
    assert not plan.finished


def test_occurrences_missed_within_the_grace_period_are_each_published_in_order() -> None:
    plan = plan_claim(
        interval_rule(60), utc(2026, 1, 1, 12), now=utc(2026, 1, 1, 12, 4), grace=GRACE
    )

    assert [p.occurrence for p in plan.publish] == [utc(2026, 1, 1, 12, m) for m in range(5)]
    assert all(p.coalesced is None for p in plan.publish)
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 5)


def test_occurrences_older_than_the_grace_period_are_skipped_and_recorded() -> None:
    plan = plan_claim(interval_rule(60), utc(2026, 1, 1, 12), now=utc(2026, 1, 1, 13), grace=GRACE)

    # 12:00 .. 12:54 are older than 12:55: one recorded run; 12:55 .. 13:00 are published.
    assert plan.missed == (
        MissedRun(MissedReason.BEYOND_GRACE, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 54), 55),
    )
    assert [p.occurrence for p in plan.publish] == [
        utc(2026, 1, 1, 12, m) for m in range(55, 60)
    ] + [utc(2026, 1, 1, 13)]
    assert plan.next_fire_at == utc(2026, 1, 1, 13, 1)


def test_coalescing_publishes_one_event_for_a_run_of_missed_occurrences() -> None:
    plan = plan_claim(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 13, 0, 30),
        grace=GRACE,
        options=ScheduleOptions(coalesce_missed=True),
    )

    coalesced = MissedRun(
        MissedReason.COALESCED, utc(2026, 1, 1, 12, 56), utc(2026, 1, 1, 12, 59), 4
    )
    assert plan.missed == (
        MissedRun(MissedReason.BEYOND_GRACE, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 55), 56),
        coalesced,
    )
    assert len(plan.publish) == 1
    assert plan.publish[0].occurrence == utc(2026, 1, 1, 13)
    assert plan.publish[0].coalesced == coalesced


def test_coalescing_leaves_a_single_due_occurrence_alone() -> None:
    plan = plan_claim(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 12, 0, 1),
        grace=GRACE,
        options=ScheduleOptions(coalesce_missed=True),
    )

    assert [(p.occurrence, p.coalesced) for p in plan.publish] == [(utc(2026, 1, 1, 12), None)]
    assert plan.missed == ()


def test_a_very_long_outage_is_recorded_without_counting_forever() -> None:
    plan = plan_claim(interval_rule(1), utc(2026, 1, 1), now=utc(2026, 1, 2), grace=GRACE)

    assert plan.missed == (MissedRun(MissedReason.BEYOND_GRACE, utc(2026, 1, 1), None, None),)
    assert plan.publish[0].occurrence == utc(2026, 1, 1, 23, 55)
    assert len(plan.publish) == 301  # 23:55:00 .. 00:00:00


def test_a_claim_publishes_a_bounded_number_and_leaves_the_rest_due() -> None:
    plan = plan_claim(
        interval_rule(1), utc(2026, 1, 1, 12), now=utc(2026, 1, 1, 12, 4), grace=GRACE, limit=100
    )

    assert len(plan.publish) == 100
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 1, 40)  # still due: the next round


def test_the_schedule_ends_after_its_maximum_count() -> None:
    options = ScheduleOptions(max_count=3)

    plan = plan_claim(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 12, 4),
        grace=GRACE,
        options=options,
        fire_count=1,
    )

    assert [p.occurrence for p in plan.publish] == [utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 1)]
    assert plan.finished
    assert plan.next_fire_at is None


def test_the_schedule_ends_at_its_end_time() -> None:
    options = ScheduleOptions(ends_at=utc(2026, 1, 1, 12, 1))

    plan = plan_claim(
        interval_rule(60),
        utc(2026, 1, 1, 12),
        now=utc(2026, 1, 1, 12),
        grace=GRACE,
        options=options,
    )

    assert [p.occurrence for p in plan.publish] == [utc(2026, 1, 1, 12)]
    assert not plan.finished  # 12:01 is still within the end
    assert plan.next_fire_at == utc(2026, 1, 1, 12, 1)
    last = plan_claim(
        interval_rule(60), utc(2026, 1, 1, 12, 1), now=utc(2026, 1, 1, 12, 1), grace=GRACE,
        options=options,
    )  # fmt: skip
    assert last.finished
    assert last.next_fire_at is None


def test_a_completion_occurrence_fires_once_and_then_waits() -> None:
    rule = after_completion_rule(2)

    plan = plan_claim(rule, utc(2026, 1, 3), now=utc(2026, 1, 3, 0, 0, 1), grace=GRACE)

    assert [p.occurrence for p in plan.publish] == [utc(2026, 1, 3)]
    assert plan.next_fire_at is None
    assert not plan.finished  # the next completion schedules the next one


# --- bounds, completion, pause, preview


def test_an_interval_with_a_start_runs_from_the_start() -> None:
    options = ScheduleOptions(starts_at=utc(2026, 1, 1, 12, 0, 0))

    assert first_occurrence(interval_rule(60), utc(2026, 1, 1, 11), options) == utc(2026, 1, 1, 12)
    # Started already: the next point of its grid.
    assert first_occurrence(interval_rule(60), utc(2026, 1, 1, 12, 2, 30), options) == utc(
        2026, 1, 1, 12, 3
    )


def test_a_cron_with_a_start_fires_first_at_or_after_the_start() -> None:
    options = ScheduleOptions(starts_at=utc(2026, 1, 5, 9))

    assert first_occurrence(cron_rule("0 9 * * *"), utc(2026, 1, 1), options) == utc(2026, 1, 5, 9)


def test_a_schedule_that_ends_before_its_first_occurrence_never_fires() -> None:
    options = ScheduleOptions(ends_at=utc(2026, 1, 1, 8))

    assert first_occurrence(cron_rule("0 9 * * *"), utc(2026, 1, 1), options) is None


def test_bounds_are_checked() -> None:
    with pytest.raises(InvalidScheduleError, match=r"ends_at .* must be after starts_at"):
        schedule_options(starts_at=utc(2026, 1, 2), ends_at=utc(2026, 1, 1))
    with pytest.raises(InvalidScheduleError, match="max_count"):
        schedule_options(max_count=0)


def test_after_completion_fires_n_days_after_each_completion() -> None:
    rule = rule_from_recurrence({"after_completion_days": 3})

    assert rule == AfterCompletionRule(3 * 86_400, "UTC")
    assert first_occurrence(rule, utc(2026, 1, 1)) is None  # waits for a completion
    completed = datetime(2026, 1, 1, 17, 30, tzinfo=UTC)
    assert next_after_completion(rule, completed, ScheduleOptions(), 0) == utc(2026, 1, 4, 17, 30)
    assert next_after_completion(rule, completed, ScheduleOptions(max_count=2), 2) is None


@pytest.mark.parametrize("days", [0, -1, "3", True, 10_000])
def test_invalid_after_completion_days_are_refused(days: object) -> None:
    with pytest.raises(InvalidScheduleError, match="after_completion_days"):
        rule_from_recurrence({"after_completion_days": days})


def test_recurrence_options() -> None:
    options = options_from_recurrence(
        {"interval_seconds": 5, "starts_at": "2026-01-01T09:00:00+01:00", "ends_at": None,
         "max_count": 4, "coalesce_missed": True}
    )  # fmt: skip

    assert options == ScheduleOptions(utc(2026, 1, 1, 8), None, 4, True)
    with pytest.raises(InvalidScheduleError, match="needs a time zone"):
        options_from_recurrence({"starts_at": "2026-01-01T09:00:00"})
    with pytest.raises(InvalidScheduleError, match="max_count must be an integer"):
        options_from_recurrence({"max_count": "4"})


def test_a_resumed_schedule_goes_on_from_now_on_its_grid() -> None:
    rule = interval_rule(60)

    resumed = resumed_next_fire_at(
        rule, utc(2026, 1, 1, 12), utc(2026, 1, 1, 12, 30, 10), ScheduleOptions()
    )

    assert resumed == utc(2026, 1, 1, 12, 31)


def test_preview_lists_the_next_occurrences_within_the_bounds() -> None:
    rule = cron_rule("0 9 * * *", "Europe/Berlin")

    assert upcoming(rule, utc(2026, 3, 28, 8), ScheduleOptions(), 0, 3) == [
        utc(2026, 3, 28, 8),
        utc(2026, 3, 29, 7),
        utc(2026, 3, 30, 7),
    ]
    assert upcoming(rule, utc(2026, 3, 28, 8), ScheduleOptions(max_count=5), 4, 3) == [
        utc(2026, 3, 28, 8)
    ]
    assert upcoming(
        rule, utc(2026, 3, 28, 8), ScheduleOptions(ends_at=utc(2026, 3, 29, 7)), 0, 3
    ) == [
        utc(2026, 3, 28, 8),
        utc(2026, 3, 29, 7),
    ]


def _schedule(rule: Rule, next_fire_at: datetime | None, *, fire_count: int = 0) -> Schedule:
    return Schedule(
        id=uuid.uuid4(), task_id="t", user_id="u", rule=rule, payload={},
        next_fire_at=next_fire_at, last_fired_at=None, fire_count=fire_count, active=True,
        created_at=utc(2026, 1, 1), updated_at=utc(2026, 1, 1),
    )  # fmt: skip


def test_an_event_with_the_same_rule_keeps_the_next_fire_time() -> None:
    existing = _schedule(interval_rule(60), utc(2026, 1, 1, 12, 0, 30))
    again = NewSchedule("t", "u", interval_rule(60), {}, utc(2026, 1, 1, 12, 1, 10))

    assert reconcile(existing, again) == (utc(2026, 1, 1, 12, 0, 30), True)
    changed = NewSchedule("t", "u", interval_rule(30), {}, utc(2026, 1, 1, 12, 0, 40))
    assert reconcile(existing, changed) == (utc(2026, 1, 1, 12, 0, 40), True)
    capped = NewSchedule("t", "u", interval_rule(60), {}, None, ScheduleOptions(max_count=2))
    assert reconcile(_schedule(interval_rule(60), utc(2026, 1, 2), fire_count=2), capped) == (
        None,
        False,
    )


# --- America/New_York (2026-03-08 02:00 EST -> 03:00 EDT, 2026-11-01 02:00 EDT -> 01:00 EST)


def test_new_york_daily_cron_keeps_its_local_time_across_both_transitions() -> None:
    rule = cron_rule("0 9 * * *", "America/New_York")

    assert occurrences(rule, utc(2026, 3, 7, 0), 2) == [
        utc(2026, 3, 7, 14),  # 09:00 EST
        utc(2026, 3, 8, 13),  # 09:00 EDT
    ]
    assert occurrences(rule, utc(2026, 10, 31, 0), 2) == [
        utc(2026, 10, 31, 13),  # 09:00 EDT
        utc(2026, 11, 1, 14),  # 09:00 EST
    ]


def test_new_york_spring_gap_fires_once_an_hour_later() -> None:
    rule = cron_rule("30 2 * * *", "America/New_York")  # 02:30 does not exist on 2026-03-08

    assert occurrences(rule, utc(2026, 3, 7, 12), 2) == [
        utc(2026, 3, 8, 7, 30),  # 03:30 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]


def test_new_york_autumn_overlap_fires_once() -> None:
    rule = cron_rule("30 1 * * *", "America/New_York")  # 01:30 happens twice on 2026-11-01

    assert occurrences(rule, utc(2026, 10, 31, 12), 2) == [
        utc(2026, 11, 1, 5, 30),  # the first 01:30 (EDT)
        utc(2026, 11, 2, 6, 30),  # the next day's 01:30 (EST)
    ]


def test_new_york_every_15_minutes_across_the_autumn_overlap_never_repeats() -> None:
    rule = cron_rule("*/15 * * * *", "America/New_York")

    fired = occurrences(rule, utc(2026, 11, 1, 4, 50), 12)  # from 00:50 EDT

    assert fired == sorted(set(fired))
    # 01:00-01:45 EDT fire; the repeated 01:00-01:45 EST do not; then 02:00 EST.
    assert fired[:6] == [
        utc(2026, 11, 1, 5, 0),
        utc(2026, 11, 1, 5, 15),
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 1, 5, 45),
        utc(2026, 11, 1, 7, 0),
        utc(2026, 11, 1, 7, 15),
    ]


@pytest.mark.parametrize(
    ("zone_name", "spring_day", "autumn_day"),
    [("Europe/Berlin", 29, 25), ("America/New_York", 8, 1)],
)
def test_catching_up_across_a_transition_publishes_each_local_occurrence_once(
    zone_name: str, spring_day: int, autumn_day: int
) -> None:
    rule = cron_rule("*/30 * * * *", zone_name)
    zone_info = ZoneInfo(zone_name)
    autumn_month = 10 if zone_name == "Europe/Berlin" else 11
    for month, day in ((3, spring_day), (autumn_month, autumn_day)):
        start = datetime(2026, month, day, 0, 0, tzinfo=zone_info).astimezone(UTC)
        plan = plan_claim(rule, start, now=start + timedelta(hours=4), grace=timedelta(hours=5))
        published = [p.occurrence for p in plan.publish]
        local = [o.astimezone(zone_info).strftime("%H:%M") for o in published]
        assert published == sorted(set(published))
        assert local == sorted(set(local))  # the wall clock never repeats or goes back
        assert all(b - a >= timedelta(minutes=30) for a, b in itertools.pairwise(published))


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


def test_a_manual_trigger_never_has_an_occurrence_id() -> None:
    schedule_id = uuid.UUID("0b9c8a52-5ad4-4a7e-9d8e-5f8d1f7a2c11")

    manual = trigger_event_id(schedule_id, "key-1")

    assert manual == trigger_event_id(schedule_id, "key-1")
    assert manual != trigger_event_id(schedule_id, "key-2")
    assert manual != occurrence_event_id(schedule_id, utc(2026, 1, 1, 9))
