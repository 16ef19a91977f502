"""Pure logic of websocket-service's stream: resume planning against a fake audit log,
held live events during a catch-up, filters, admin watchers, client messages, the
subprotocol choice and coalesced batches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskevents.events import TaskEvent
from websocket_service.api.stream import choose_subprotocol
from websocket_service.frames import (
    ChangeSubscription,
    Malformed,
    Ping,
    batch_frame,
    event_frame,
    parse_client_message,
)
from websocket_service.handlers import plan_catch_up
from websocket_service.hub import ClientConnection, Close, CloseCode, Hub
from websocket_service.ports import AuditHistory, AuditUnavailableError


def event(
    event_id: str, user_id: str = "ada", task_id: str = "t1", type_: str = "task.updated"
) -> TaskEvent:
    return TaskEvent.create(type_, task_id=task_id, user_id=user_id, event_id=event_id)


@dataclass
class FakeAuditLog:
    """Holds events oldest first; answers like GET /audit/events walked to the anchor."""

    events: list[TaskEvent] = field(default_factory=list)
    down: bool = False
    asked: list[tuple[str | None, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # the bearer token of each request

    async def history_until(
        self, user_id: str | None, anchor_event_id: str, *, max_events: int, bearer_token: str
    ) -> AuditHistory:
        self.asked.append((user_id, anchor_event_id))
        self.tokens.append(bearer_token)
        if self.down:
            raise AuditUnavailableError("connection refused")
        newest_first = [e for e in reversed(self.events) if user_id in (None, e.user_id)]
        taken: list[TaskEvent] = []
        for item in newest_first:
            taken.append(item)
            if item.event_id == anchor_event_id:
                return AuditHistory(
                    taken, found_anchor=True, ids=frozenset(e.event_id for e in taken)
                )
            if len(taken) > max_events:
                return AuditHistory(
                    taken[:max_events], truncated=True, ids=frozenset(e.event_id for e in taken)
                )
        return AuditHistory(taken, ids=frozenset(e.event_id for e in taken))


TOKEN = "the-clients-own-jwt"


def ids(events: Sequence[TaskEvent]) -> list[str]:
    return [e.event_id for e in events]


async def test_the_catch_up_is_what_follows_the_last_seen_event_oldest_first() -> None:
    audit = FakeAuditLog([event(f"e{n}") for n in range(6)] + [event("x", user_id="bob")])

    plan = await plan_catch_up(
        "ada", "e2", audit=audit, latest=[], max_events=100, bearer_token=TOKEN
    )

    assert (plan.status, ids(plan.events)) == ("complete", ["e3", "e4", "e5"])
    assert audit.asked == [("ada", "e2")]
    assert audit.tokens == [TOKEN]


async def test_events_the_audit_log_has_not_stored_yet_come_from_memory() -> None:
    audit = FakeAuditLog([event("e1"), event("e2"), event("e3")])
    latest = [event("e2"), event("e3"), event("e4"), event("e4")]  # e4: not stored yet, twice

    plan = await plan_catch_up(
        "ada", "e1", audit=audit, latest=latest, max_events=100, bearer_token=TOKEN
    )

    assert (plan.status, ids(plan.events)) == ("complete", ["e2", "e3", "e4"])


async def test_a_last_event_only_memory_knows_resumes_from_memory() -> None:
    audit = FakeAuditLog([event("e1")])
    latest = [event("e1"), event("e2"), event("e3")]

    plan = await plan_catch_up(
        "ada", "e2", audit=audit, latest=latest, max_events=100, bearer_token=TOKEN
    )

    assert (plan.status, ids(plan.events)) == ("complete", ["e3"])


async def test_too_much_missed_is_partial_and_an_unknown_event_replays_nothing() -> None:
    audit = FakeAuditLog([event(f"e{n}") for n in range(10)])

    too_much = await plan_catch_up(
        "ada", "e0", audit=audit, latest=[], max_events=3, bearer_token=TOKEN
    )
    unknown = await plan_catch_up(
        "ada", "nope", audit=audit, latest=[], max_events=100, bearer_token=TOKEN
    )

    assert (too_much.status, ids(too_much.events)) == ("partial", ["e7", "e8", "e9"])
    assert too_much.reason is not None
    assert "more than 3" in too_much.reason
    assert (unknown.status, unknown.events) == ("partial", [])
    assert unknown.reason is not None
    assert "unknown" in unknown.reason


async def test_an_audit_log_that_does_not_answer_is_reported() -> None:
    audit = FakeAuditLog(down=True)

    plan = await plan_catch_up(
        "ada",
        "e1",
        audit=audit,
        latest=[event("e1"), event("e2")],
        max_events=9,
        bearer_token=TOKEN,
    )

    assert plan.status == "unavailable"
    assert plan.reason is not None
    assert "did not answer" in plan.reason
    assert ids(plan.events) == ["e2"]  # what memory had after the anchor


def decoded(connection: ClientConnection) -> list[Any]:
    frames: list[Any] = []
    while (frame := connection.next_frame_nowait()) is not None:
        frames.append(frame if isinstance(frame, Close) else json.loads(frame))
    return frames


def test_live_events_wait_during_a_catch_up_and_skip_what_it_sent() -> None:
    hub = Hub(max_queue_frames=10, recent_event_ids=10)
    with hub.connect("ada", hold=True) as connection:
        hub.publish(event("e3"))
        hub.publish(event("e4"))
        assert connection.pending_frames == 0  # held, not queued

        queued = connection.release_held({"e2", "e3"})

        assert queued == 1
        assert [f["event"]["event_id"] for f in decoded(connection)] == ["e4"]
        hub.publish(event("e3"))  # a redelivery of a replayed event
        assert decoded(connection) == []


def test_too_many_held_events_close_the_connection() -> None:
    hub = Hub(max_queue_frames=2, recent_event_ids=10)
    with hub.connect("ada", hold=True) as connection:
        reports = [hub.publish(event(f"e{n}")) for n in range(3)]
        assert reports[-1].overflowed == 1
        assert connection.close_requested is not None
        assert connection.close_requested.code == CloseCode.TRY_AGAIN_LATER


def test_filters_narrow_and_admins_watch_every_user() -> None:
    hub = Hub(max_queue_frames=10, recent_event_ids=10, replay_buffer_events=3)
    with hub.connect("ada") as narrow, hub.connect("root", watch_all=True) as admin:
        narrow.change_subscription(add=True, task_ids=frozenset({"t2"}), types=frozenset())
        hub.publish(event("e1", task_id="t1"))
        hub.publish(event("e2", task_id="t2"))
        hub.publish(event("e3", user_id="bob", task_id="t2"))
        narrow.change_subscription(add=False, task_ids=frozenset({"t2"}), types=frozenset())
        narrow.change_subscription(
            add=True, task_ids=frozenset(), types=frozenset({"task.deleted"})
        )
        hub.publish(event("e4", task_id="t9", type_="task.deleted"))
        hub.publish(event("e5", task_id="t9"))

        assert [f["event"]["event_id"] for f in decoded(narrow)] == ["e2", "e4"]
        assert [f["event"]["event_id"] for f in decoded(admin)] == ["e1", "e2", "e3", "e4", "e5"]
        assert ids(hub.latest_events("ada")) == ["e4", "e5"]  # the buffer keeps 3
        assert ids(hub.latest_events(None)) == ["e3", "e4", "e5"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"v":1,"kind":"ping"}', Ping()),
        (
            '{"v":1,"kind":"subscribe","task_ids":["t1"],"types":["task.created"]}',
            ChangeSubscription(
                add=True, task_ids=frozenset({"t1"}), types=frozenset({"task.created"})
            ),
        ),
        ('{"kind":"unsubscribe","types":["task.created"]}',
         ChangeSubscription(add=False, types=frozenset({"task.created"}))),
    ],
)  # fmt: skip
def test_client_messages_are_understood(text: str, expected: object) -> None:
    assert parse_client_message(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('{"v":1,"kind":"subscribe"}', "at least one"),
        ('{"v":1,"kind":"subscribe","types":["task.nope"]}', "unknown event type"),
        ('{"v":1,"kind":"subscribe","task_ids":"t1"}', "list of non-empty strings"),
        ('{"v":1,"kind":"subscribe","task_ids":[""]}', "list of non-empty strings"),
        ('{"v":1,"kind":"subscribe","task_ids":["t"],"extra":1}', "unknown field"),
        ('{"v":1,"kind":"subscribe","task_ids":' + json.dumps([str(n) for n in range(201)]) + "}",
         "at most 200"),
        ('{"v":1,"kind":"dance"}', "unknown message kind"),
    ],
)  # fmt: skip
def test_malformed_client_messages_get_a_reason(text: str, complaint: str) -> None:
    message = parse_client_message(text)
    assert isinstance(message, Malformed)
    assert complaint in json.loads(message.reply)["message"]


def test_the_subprotocol_carries_the_token_and_is_never_echoed() -> None:
    assert choose_subprotocol(["taskevents.v1", "bearer.abc.def"]) == ("taskevents.v1", "abc.def")
    assert choose_subprotocol(["bearer.abc"]) == (None, "abc")
    assert choose_subprotocol(["taskevents.v1"]) == ("taskevents.v1", None)
    assert choose_subprotocol([]) == (None, None)


def test_a_batch_holds_the_frames_unchanged_and_replays_are_marked() -> None:
    frames = [event_frame(event("e1")), event_frame(event("e2"), replayed=True)]

    batch = json.loads(batch_frame(frames))

    assert (batch["v"], batch["kind"]) == (1, "batch")
    assert [f["event"]["event_id"] for f in batch["frames"]] == ["e1", "e2"]
    assert [f.get("replayed", False) for f in batch["frames"]] == [False, True]
