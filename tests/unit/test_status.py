from __future__ import annotations

from taskevents.status import DaprStatus, Outcome


def test_statuses_are_exactly_the_three_dapr_understands() -> None:
    assert {s.value for s in DaprStatus} == {"SUCCESS", "RETRY", "DROP"}


def test_outcome_response_bodies() -> None:
    assert Outcome.success().response() == {"status": "SUCCESS"}
    assert Outcome.retry("db down").response() == {"status": "RETRY"}
    dropped = Outcome.drop("bad event")
    assert dropped.response() == {"status": "DROP"}
    assert dropped.reason == "bad event"
