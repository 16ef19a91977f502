"""Pure logic of websocket-service's stream: resume planning against a fake audit log,
held live events during a catch-up, filters, admin watchers, client messages, the
subprotocol choice and coalesced batches."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from taskevents.events import TaskEvent
from websocket_service.adapters.audit_log import DaprAuditLog
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
    """Holds events in commit order; answers like GET /audit/events?after_event_id=."""

    events: list[TaskEvent] = field(default_factory=list)
    down: bool = False
    asked: list[tuple[str | None, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # the bearer token of each request

    async def history_after(
        self, user_id: str | None, anchor_event_id: str, *, max_events: int, bearer_token: str
    ) -> AuditHistory:
        self.asked.append((user_id, anchor_event_id))
        self.tokens.append(bearer_token)
        if self.down:
            raise AuditUnavailableError("connection refused")
        mine = [e for e in self.events if user_id in (None, e.user_id)]
        positions = [n for n, e in enumerate(mine) if e.event_id == anchor_event_id]
        if not positions:
            return AuditHistory(found_anchor=False)
        after = mine[positions[0] + 1 :]
        return AuditHistory(
            after[:max_events], found_anchor=True, truncated=len(after) > max_events
        )


TOKEN = "the-clients-own-jwt"


def ids(events: Sequence[TaskEvent]) -> list[str]:
    return [e.event_id for e in events]


async def test_a_replica_that_remembers_the_anchor_replays_what_came_after_it_there() -> None:
    # Two tasks (two partitions): the audit log committed them in another interleaving than
    # this replica received them. The client saw a1, b1, a2 here.
    arrived = [event("a1", task_id="a"), event("b1", task_id="b"), event("a2", task_id="a"),
               event("b2", task_id="b"), event("a3", task_id="a")]  # fmt: skip
    audit = FakeAuditLog([arrived[i] for i in (0, 2, 4, 1, 3)])  # a1 a2 a3 b1 b2

    plan = await plan_catch_up(
        "ada", "a2", audit=audit, latest=arrived, max_events=100, bearer_token=TOKEN
    )

    # In commit order, "after a2" is a3, b1, b2: b1 a second time. From memory: b2, a3.
    assert (plan.status, ids(plan.events)) == ("complete", ["b2", "a3"])
    assert audit.asked == []


async def test_without_the_anchor_in_memory_the_audit_log_gives_its_commit_order() -> None:
    audit = FakeAuditLog([event(f"e{n}") for n in range(6)] + [event("x", user_id="bob")])

    plan = await plan_catch_up(
        "ada", "e2", audit=audit, latest=[], max_events=100, bearer_token=TOKEN
    )

    assert (plan.status, ids(plan.events)) == ("complete", ["e3", "e4", "e5"])
    assert audit.asked == [("ada", "e2")]
    assert audit.tokens == [TOKEN]


async def test_events_the_audit_log_has_not_stored_yet_come_from_memory() -> None:
    audit = FakeAuditLog([event("e1"), event("e2"), event("e3"), event("e5")])
    latest = [event("e3"), event("e2"), event("e4"), event("e4")]  # e4: not stored yet, twice

    plan = await plan_catch_up(
        "ada", "e1", audit=audit, latest=latest, max_events=100, bearer_token=TOKEN
    )

    # e5 only the audit log has (this replica never received it); the others in the order
    # the live stream had them.
    assert (plan.status, ids(plan.events)) == ("complete", ["e5", "e3", "e2", "e4"])


async def test_a_last_event_only_memory_knows_resumes_from_memory() -> None:
    audit = FakeAuditLog([event("e1")])
    latest = [event("e1"), event("e2"), event("e3"), event("e2")]  # e2 redelivered

    plan = await plan_catch_up(
        "ada", "e2", audit=audit, latest=latest, max_events=100, bearer_token=TOKEN
    )

    assert (plan.status, ids(plan.events)) == ("complete", ["e3"])


async def test_too_much_missed_is_partial_and_an_unknown_event_replays_nothing() -> None:
    audit = FakeAuditLog([event(f"e{n}") for n in range(10)])

    too_much = await plan_catch_up(
        "ada", "e0", audit=audit, latest=[], max_events=3, bearer_token=TOKEN
    )
    from_memory = await plan_catch_up(
        "ada", "e0", audit=audit, latest=audit.events, max_events=3, bearer_token=TOKEN
    )
    unknown = await plan_catch_up(
        "ada", "nope", audit=audit, latest=[], max_events=100, bearer_token=TOKEN
    )

    for plan in (too_much, from_memory):
        assert (plan.status, ids(plan.events)) == ("partial", ["e1", "e2", "e3"])
        assert plan.reason is not None
        assert "more than 3" in plan.reason
    assert (unknown.status, unknown.events) == ("partial", [])
    assert unknown.reason is not None
    assert "unknown" in unknown.reason


async def test_an_audit_log_that_does_not_answer_is_reported() -> None:
    audit = FakeAuditLog(down=True)

    plan = await plan_catch_up(
        "ada", "e1", audit=audit, latest=[event("e2")], max_events=9, bearer_token=TOKEN
    )

    assert plan.status == "unavailable"
    assert plan.reason is not None
    assert "did not answer" in plan.reason
    assert plan.events == []


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("replica", ["remembers", "restarted"])
async def test_a_client_that_drops_out_anywhere_gets_each_event_once_in_task_order(
    seed: int, replica: str
) -> None:
    """Events of eight tasks arrive interleaved; the audit log commits them in batches in
    another interleaving (each task's events in order). A client drops out at a random
    point — live, or during a replay — and resumes, three times; in the end it has every
    event once, each task's in order. The replica either remembers every event, or it
    restarted and remembers none (then what the client had came from the audit log too)."""
    rng = random.Random(seed)
    queues = {t: [event(f"{t}-{n}", task_id=t) for n in range(rng.randint(1, 8))]
              for t in "abcdefgh"}  # fmt: skip
    arrived = _interleave(rng, queues)
    audit = FakeAuditLog(_interleave(rng, queues))
    latest = arrived if replica == "remembers" else []
    stream = arrived if replica == "remembers" else audit.events
    received = stream[: rng.randint(1, len(stream))]
    for _ in range(3):
        plan = await plan_catch_up(
            "ada", received[-1].event_id, audit=audit, latest=latest,
            max_events=1000, bearer_token=TOKEN,
        )  # fmt: skip
        assert plan.status == "complete"
        received += plan.events[: rng.randint(1, max(1, len(plan.events)))]
    plan = await plan_catch_up(
        "ada", received[-1].event_id, audit=audit, latest=latest,
        max_events=1000, bearer_token=TOKEN,
    )  # fmt: skip
    received += plan.events

    assert sorted(ids(received)) == sorted(ids(arrived))
    assert len(set(ids(received))) == len(received)
    for task, events in queues.items():
        assert [e.event_id for e in received if e.task_id == task] == ids(events)


def _interleave(rng: random.Random, queues: dict[str, list[TaskEvent]]) -> list[TaskEvent]:
    positions = dict.fromkeys(queues, 0)
    order = []
    while any(positions[t] < len(q) for t, q in queues.items()):
        task = rng.choice([t for t, q in queues.items() if positions[t] < len(q)])
        take = rng.randint(1, 3)
        order += queues[task][positions[task] : positions[task] + take]
        positions[task] = min(len(queues[task]), positions[task] + take)
    return order


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


# --- the audit log adapter's paging, against a fake GET /audit/events ----------------------


def fake_audit_api(stored: list[TaskEvent], asked: list[dict[str, str]]) -> httpx.MockTransport:
    """Commit order is the list order; seq = position + 1; the anchor must be stored."""

    def answer(request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        asked.append(params)
        limit = int(params["limit"])
        if "after_event_id" in params:
            seqs = [n + 1 for n, e in enumerate(stored) if e.event_id == params["after_event_id"]]
            if not seqs:
                return httpx.Response(404, json={"detail": "event x is not in the audit log"})
            after = seqs[0]
        else:
            after = int(params["after_seq"])
        page = stored[after : after + limit]
        items = [{**json.loads(e.to_json()), "seq": after + n + 1} for n, e in enumerate(page)]
        return httpx.Response(
            200, json={"items": items, "next_cursor": None, "next_after_seq": after + len(page)}
        )

    return httpx.MockTransport(answer)


async def test_the_adapter_pages_by_seq_from_the_anchor_until_a_short_page() -> None:
    stored = [event(f"e{n}") for n in range(1200)]
    asked: list[dict[str, str]] = []
    audit = DaprAuditLog(dapr_http_port=1, transport=fake_audit_api(stored, asked))

    everything = await audit.history_after("ada", "e5", max_events=2000, bearer_token=TOKEN)
    first = await audit.history_after("ada", "e5", max_events=600, bearer_token=TOKEN)
    unknown = await audit.history_after("ada", "nope", max_events=10, bearer_token=TOKEN)
    await audit.close()

    assert ids(everything.events) == ids(stored[6:])
    assert (everything.found_anchor, everything.truncated) == (True, False)
    assert ids(first.events) == ids(stored[6:606])
    assert first.truncated
    assert not unknown.found_anchor
    assert [{k: v for k, v in a.items() if k != "user_id"} for a in asked[:4]] == [
        {"limit": "500", "after_event_id": "e5"},
        {"limit": "500", "after_seq": "506"},
        {"limit": "500", "after_seq": "1006"},
        {"limit": "500", "after_event_id": "e5"},  # 601 wanted: 500, then 101
    ]
    assert asked[4] == {"limit": "101", "after_seq": "506", "user_id": "ada"}


async def test_an_audit_log_without_commit_order_is_reported_unavailable() -> None:
    def older_release(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"detail": [{"loc": ["query", "after_event_id"]}]})

    audit = DaprAuditLog(dapr_http_port=1, transport=httpx.MockTransport(older_release))
    with pytest.raises(AuditUnavailableError, match="answered 422"):
        await audit.history_after("ada", "e1", max_events=10, bearer_token=TOKEN)
    await audit.close()
