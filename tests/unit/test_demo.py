from __future__ import annotations

from collections import defaultdict
from itertools import islice

import pytest

from taskevents.events import EventType
from taskevents_cli.demo import DemoStream

ORDER = {
    EventType.TASK_CREATED: 0,
    EventType.TASK_UPDATED: 1,
    EventType.TASK_COMPLETED: 2,
    EventType.TASK_DELETED: 3,
}


def test_each_task_follows_its_life_cycle() -> None:
    events = list(islice(DemoStream(users=5, seed=1), 2000))
    per_task: dict[str, list[EventType]] = defaultdict(list)
    for event in events:
        kind = event.known_type
        assert kind is not None
        per_task[event.task_id].append(kind)
    for kinds in per_task.values():
        assert kinds[0] is EventType.TASK_CREATED
        assert [ORDER[k] for k in kinds] == sorted(ORDER[k] for k in kinds)
        assert kinds.count(EventType.TASK_CREATED) == 1
        assert kinds.count(EventType.TASK_COMPLETED) <= 1
        assert kinds.count(EventType.TASK_DELETED) <= 1


def test_stream_is_realistic() -> None:
    events = list(islice(DemoStream(users=20, seed=2), 3000))
    kinds = {e.known_type for e in events}
    assert kinds == set(ORDER)
    created = [e for e in events if e.known_type is EventType.TASK_CREATED]
    assert any("recurrence" in e.payload for e in created)
    assert any("due_at" in e.payload for e in created)
    assert all(e.payload.get("user_email") for e in events)
    assert {e.user_id for e in events} <= {f"user-{i}" for i in range(20)}
    assert len({e.event_id for e in events}) == len(events)


def test_same_seed_same_stream() -> None:
    first = [e.event_id for e in islice(DemoStream(users=3, seed=7), 50)]
    again = [e.event_id for e in islice(DemoStream(users=3, seed=7), 50)]
    assert first == again


def test_needs_a_user() -> None:
    with pytest.raises(ValueError, match="users"):
        DemoStream(users=0)
