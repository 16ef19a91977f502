from __future__ import annotations

import json
from typing import Any

import pytest

from taskevents.events import TaskEvent
from taskevents.status import DaprStatus
from websocket_service.handlers import push_event_to_clients
from websocket_service.hub import (
    MAX_CLOSE_REASON_BYTES,
    ClientConnection,
    Close,
    CloseCode,
    Hub,
    RecentIds,
)


def make_event(
    user_id: str, *, event_id: str | None = None, type_: str = "task.created"
) -> TaskEvent:
    return TaskEvent.create(
        type_, task_id="task-1", user_id=user_id, event_id=event_id, payload={"title": "T"}
    )


def drain(connection: ClientConnection) -> list[Any]:
    """Everything queued for the connection: decoded frames, and Close markers as is."""
    frames: list[Any] = []
    while connection.pending_frames:
        frame = connection._queue.get_nowait()
        frames.append(frame if isinstance(frame, Close) else json.loads(frame))
    return frames


def event_ids(frames: list[Any]) -> list[str]:
    return [f["event"]["event_id"] for f in frames if isinstance(f, dict)]


def test_events_reach_only_the_connections_of_their_user() -> None:
    hub = Hub(max_queue_frames=10, recent_event_ids=10)
    with hub.connect("ada") as ada, hub.connect("ada") as ada_phone, hub.connect("bob") as bob:
        for_ada = make_event("ada")
        for_bob = make_event("bob")

        hub.publish(for_ada)
        hub.publish(for_bob)

        assert event_ids(drain(ada)) == [for_ada.event_id]
        assert event_ids(drain(ada_phone)) == [for_ada.event_id]
        assert event_ids(drain(bob)) == [for_bob.event_id]


def test_an_event_frame_carries_the_whole_event() -> None:
    hub = Hub(max_queue_frames=10, recent_event_ids=10)
    with hub.connect("ada") as ada:
        event = make_event("ada")
        hub.publish(event)

        [frame] = drain(ada)

    assert frame["v"] == 1
    assert frame["kind"] == "event"
    assert TaskEvent.model_validate(frame["event"]) == event


def test_a_redelivered_event_is_sent_once_per_connection() -> None:
    hub = Hub(max_queue_frames=10, recent_event_ids=10)
    with hub.connect("ada") as ada:
        event = make_event("ada")

        first = hub.publish(event)
        again = hub.publish(event)

        assert (first.queued, first.duplicates) == (1, 0)
        assert (again.queued, again.duplicates) == (0, 1)
        assert event_ids(drain(ada)) == [event.event_id]


def test_a_connection_that_joins_later_still_gets_a_redelivery() -> None:
    hub = Hub(max_queue_frames=10, recent_event_ids=10)
    event = make_event("ada")
    with hub.connect("ada") as early:
        hub.publish(event)
        with hub.connect("ada") as late:
            hub.publish(event)

            assert event_ids(drain(early)) == [event.event_id]
            assert event_ids(drain(late)) == [event.event_id]


def test_a_full_queue_closes_only_the_slow_connection() -> None:
    hub = Hub(max_queue_frames=3, recent_event_ids=100)
    with hub.connect("ada") as slow, hub.connect("ada") as fast:
        for n in range(3):
            hub.publish(make_event("ada", event_id=f"e{n}"))
        drain(fast)  # the fast client keeps up; the slow one reads nothing

        report = hub.publish(make_event("ada", event_id="e3"))

        assert (report.queued, report.overflowed) == (1, 1)
        assert slow.close_requested is not None
        assert slow.close_requested.code == CloseCode.TRY_AGAIN_LATER
        assert "too slow" in slow.close_requested.reason
        # Its backlog is dropped: the close is all it gets now.
        assert drain(slow) == [slow.close_requested]
        assert fast.close_requested is None
        assert event_ids(drain(fast)) == ["e3"]

        later = hub.publish(make_event("ada", event_id="e4"))

        assert (later.queued, later.overflowed) == (1, 0)
        assert drain(slow) == []


def test_leaving_the_context_unregisters_even_on_error() -> None:
    hub = Hub(max_queue_frames=3, recent_event_ids=3)

    def use_a_connection_that_breaks() -> None:
        with hub.connect("ada"):
            assert hub.connection_count == 1
            raise RuntimeError("socket broke")

    with pytest.raises(RuntimeError):
        use_a_connection_that_breaks()

    assert hub.connection_count == 0
    assert hub.connections_of("ada") == frozenset()
    assert hub.publish(make_event("ada")).queued == 0


def test_close_all_queues_a_going_away_close_after_pending_frames() -> None:
    hub = Hub(max_queue_frames=5, recent_event_ids=5)
    going_away = Close(CloseCode.GOING_AWAY, "server shutting down")
    with hub.connect("ada") as ada, hub.connect("bob") as bob:
        event = make_event("ada")
        hub.publish(event)

        hub.close_all(going_away)
        hub.close_all(Close(CloseCode.NORMAL, "second request is ignored"))

        frames = drain(ada)
        assert event_ids(frames) == [event.event_id]
        assert frames[-1] == going_away
        assert drain(bob) == [going_away]


async def test_wait_until_empty_returns_once_everyone_left() -> None:
    hub = Hub(max_queue_frames=1, recent_event_ids=1)
    await hub.wait_until_empty()  # nobody connected
    with hub.connect("ada"):
        assert hub.connection_count == 1
    await hub.wait_until_empty()


def test_close_reasons_fit_a_close_frame() -> None:
    close = Close(CloseCode.TRY_AGAIN_LATER, "é" * 200)

    assert len(close.reason.encode()) <= MAX_CLOSE_REASON_BYTES


def test_recent_ids_forget_the_oldest() -> None:
    recent = RecentIds(2)

    assert recent.add("a")
    assert recent.add("b")
    assert not recent.add("a")
    assert recent.add("c")  # forgets "a"
    assert recent.add("a")
    assert len(recent) == 2


async def test_the_handler_pushes_known_events_and_always_succeeds() -> None:
    hub = Hub(max_queue_frames=1, recent_event_ids=10)
    with hub.connect("ada") as ada:
        first = await push_event_to_clients(make_event("ada", event_id="e1"), fanout=hub)
        overflow = await push_event_to_clients(make_event("ada", event_id="e2"), fanout=hub)
        unknown = await push_event_to_clients(
            make_event("ada", event_id="e3", type_="task.archived"), fanout=hub
        )

        assert [o.status for o in (first, overflow, unknown)] == [DaprStatus.SUCCESS] * 3
        assert ada.close_requested is not None
        assert ada.close_requested.code == CloseCode.TRY_AGAIN_LATER
