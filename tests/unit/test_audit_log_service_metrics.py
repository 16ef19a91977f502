"""The audit log's own metrics move where the handlers learn what happened: a new row or a
duplicate, a dead letter filed, seen again or lost, a replay or a discard."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY

from audit_log_service.handlers import (
    discard_dead_letter,
    record_dead_letter,
    record_event,
    record_events,
    replay_dead_letter,
)
from audit_log_service.ports import DeadLetter, Delivery
from taskevents.events import TaskEvent
from tests.unit.test_audit_log_service_api import FakeAudit, stored_dead_letter
from tests.unit.test_audit_log_service_handlers import (
    DLQ,
    FakeAuditLog,
    RefusingAuditLog,
    an_event,
)

SERIES = {
    ("taskevents_audit_events_total", "result", "stored"),
    ("taskevents_audit_events_total", "result", "duplicate"),
    ("taskevents_audit_dead_letters_total", "result", "filed"),
    ("taskevents_audit_dead_letters_total", "result", "seen_again"),
    ("taskevents_audit_dead_letters_total", "result", "lost"),
    ("taskevents_audit_dead_letter_actions_total", "action", "replayed"),
    ("taskevents_audit_dead_letter_actions_total", "action", "discarded"),
}


def sample(name: str, label: str, value: str) -> float:
    found = REGISTRY.get_sample_value(name, {label: value})
    assert found is not None, f"{name}{{{label}={value!r}}} is not exported"
    return found


@contextmanager
def increases() -> Iterator[dict[str, float]]:
    """What each series of the audit log grew by inside the block, keyed by its label value."""
    before = {series: sample(*series) for series in SERIES}
    grown: dict[str, float] = {}
    yield grown
    grown.update({series[2]: sample(*series) - before[series] for series in SERIES})


async def test_stored_events_and_duplicates_are_counted_apart() -> None:
    log = FakeAuditLog()
    first, second = an_event(), an_event()

    with increases() as grown:
        await record_event(first, delivery=Delivery(), audit_log=log)
        await record_event(first, delivery=Delivery(), audit_log=log)
        await record_events(
            [(first, Delivery()), (second, Delivery()), (second, Delivery())], audit_log=log
        )

    assert (grown["stored"], grown["duplicate"]) == (2, 3)


async def test_a_batch_written_event_by_event_is_counted_once() -> None:
    log = FakeAuditLog()
    good, bad = an_event(), an_event(task_id="task-\x00")  # the fake refuses it in a batch

    with increases() as grown:
        await record_events([(good, Delivery()), (bad, Delivery())], audit_log=log)

    assert (grown["stored"], grown["duplicate"]) == (2, 0)


async def test_dead_letters_are_counted_filed_seen_again_or_lost() -> None:
    letter = DeadLetter(message_id="ce-1", topic=DLQ, raw="{}")
    log = FakeAuditLog()

    with increases() as grown:
        await record_dead_letter(letter, audit_log=log)
        await record_dead_letter(letter, audit_log=log)
        await record_dead_letter(letter, audit_log=RefusingAuditLog())

    assert (grown["filed"], grown["seen_again"], grown["lost"]) == (1, 1, 1)


async def test_replays_and_discards_are_counted() -> None:
    event = TaskEvent.create("task.created", task_id="t-1", user_id="u-1")
    desk = FakeAudit()
    raw = json.dumps({"id": event.event_id, "data": json.loads(event.to_json())})
    desk.letters[1] = stored_dead_letter(1, raw)

    with increases() as grown:
        await replay_dead_letter(1, operator="ada", desk=desk, publisher=desk)
        await discard_dead_letter(1, operator="ada", desk=desk)
        await discard_dead_letter(2, operator="ada", desk=desk)  # no such letter

    assert (grown["replayed"], grown["discarded"]) == (1, 1)
    assert desk.republished == [event]
