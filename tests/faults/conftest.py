"""Options of the fault suite: `--soak-minutes N` (or FAULTS_SOAK_MINUTES) turns the short
run into a soak that repeats the fault schedule for N minutes; `--fault-seed S` (or
FAULTS_SEED) replays the schedule of a printed seed."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-minutes",
        type=float,
        default=float(os.environ.get("FAULTS_SOAK_MINUTES", "0")),
        help="run the fault suite as a soak of this many minutes (0: the short run)",
    )
    parser.addoption(
        "--fault-seed",
        type=int,
        default=int(os.environ["FAULTS_SEED"]) if os.environ.get("FAULTS_SEED") else None,
        help="the seed of the fault schedule (printed by every run) to replay",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A soak outlasts the suite's default timeout: give it the soak and a quarter hour."""
    soak = float(config.getoption("--soak-minutes"))
    if soak:
        for item in items:
            if "tests/faults/" in str(item.path).replace("\\", "/"):
                item.add_marker(pytest.mark.timeout(int(soak * 60 + 900)))
