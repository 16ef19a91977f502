"""The benchmarks' comparison of a Dapr path with its direct baseline (bench/common.py)."""

from __future__ import annotations

import pytest

from bench.common import compare_turns, cpu_table, cpu_us_per_event, percentile, ratio
from bench.procfs import CpuMeter


def test_turns_are_compared_by_their_medians_and_turn_by_turn() -> None:
    dapr = [{"p99_ms": 30.0}, {"p99_ms": 90.0}, {"p99_ms": 40.0}]
    direct = [{"p99_ms": 20.0}, {"p99_ms": 30.0}, {"p99_ms": 10.0}]

    compared = compare_turns(dapr, direct, ("p99_ms",))["p99_ms"]

    assert compared == {
        "dapr": 40.0,
        "direct": 20.0,
        "ratio": 2.0,
        "ratio_per_turn": [1.5, 3.0, 4.0],
    }


def test_turns_must_pair_up() -> None:
    with pytest.raises(ValueError, match="a turn"):
        compare_turns([{"x": 1.0}], [], ("x",))


def test_a_baseline_that_measured_nothing_gives_no_ratio() -> None:
    assert ratio(5.0, 0.0) is None
    assert ratio(3.0, 4.0) == 0.75


def test_cpu_per_event_by_process_and_in_all() -> None:
    per_event = cpu_us_per_event({"service": 0.5, "daprd": 0.25}, 1000)

    assert per_event == {"service": 500, "daprd": 250, "all": 750}


def test_cpu_table_marks_a_process_a_path_does_not_have() -> None:
    lines = cpu_table(
        {"Dapr": {"service": 5, "daprd": 3, "all": 8}, "direct": {"service": 4}},
        ("service", "daprd"),
    )

    assert lines[2] == "| Dapr | 5 | 3 | 8 |"
    assert lines[3] == "| direct | 4 | - | 4 |"


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]

    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.99) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_cpu_of_a_process_that_ended_between_readings_is_not_taken_off() -> None:
    before = {"kafka": {10: 5.0, 11: 100.0}}
    after = {"kafka": {10: 6.5, 12: 0.25}}  # 11 ended; 12 started meanwhile

    assert CpuMeter.used(before, after) == {"kafka": 1.75}
