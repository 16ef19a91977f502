"""The audit log's HTTP edge with fake storage: query parameter validation, the SQL the
filters turn into, and the subscription routes passing daprd's metadata to the handlers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio

from audit_log_service.adapters.postgres import dead_letters_query, events_query
from audit_log_service.api.events import (
    EventQuery,
    InvalidCursorError,
    decode_cursor,
    encode_cursor,
)
from audit_log_service.app import create_app
from audit_log_service.bootstrap import Bootstrap, Services
from audit_log_service.ports import (
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EventFilter,
    EventKey,
    EventStats,
    StoredDeadLetter,
    StoredEvent,
)
from audit_log_service.settings import Settings
from taskevents.auth import verifier_from
from taskevents.events import TaskEvent
from taskevents.web import ReadinessCheck
from tests.support.authorization import bearer, serving

NOW = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


@dataclass
class FakeAudit:
    events: list[tuple[TaskEvent, Delivery]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    queries: list[Any] = field(default_factory=list)
    batches: list[list[tuple[TaskEvent, Delivery]]] = field(default_factory=list)
    letters: dict[int, StoredDeadLetter] = field(default_factory=dict)
    republished: list[TaskEvent] = field(default_factory=list)
    replayed_for: list[str | None] = field(default_factory=list)
    stats_of: list[str | None] = field(default_factory=list)

    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        self.events.append((event, delivery))
        return True

    async def record_events(self, batch: Sequence[tuple[TaskEvent, Delivery]]) -> set[str]:
        self.batches.append(list(batch))
        return {event.event_id for event, _ in batch}

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        self.dead_letters.append(letter)
        return 1

    async def list_events(self, where: EventFilter) -> list[StoredEvent]:
        self.queries.append(where)
        return [stored_event("e-1")]

    async def task_history(self, task_id: str, limit: int) -> list[StoredEvent]:
        self.queries.append((task_id, limit))
        return [stored_event("e-1", task_id=task_id)]

    async def commit_seq_of(self, event_id: str, user_id: str | None) -> int | None:
        self.queries.append(("seq of", event_id, user_id))
        return {"e-7": 7}.get(event_id) if user_id in (None, "user-1") else None

    async def event_stats(
        self, since: datetime, until: datetime, user_id: str | None = None
    ) -> EventStats:
        self.queries.append((since, until))
        self.stats_of.append(user_id)
        return EventStats(since=since, until=until, total=0, by_type={}, by_hour=[])

    async def list_dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        self.queries.append(where)
        return sorted(self.letters.values(), key=lambda d: -d.id)[: where.limit]

    async def get_dead_letter(self, letter_id: int) -> StoredDeadLetter | None:
        return self.letters.get(letter_id)

    async def mark_replayed(self, letter_id: int, operator: str) -> StoredDeadLetter | None:
        return self._update(letter_id, status="replayed", replayed_by=operator, replay_count=1)

    async def mark_discarded(self, letter_id: int, operator: str) -> StoredDeadLetter | None:
        return self._update(letter_id, status="discarded", discarded_by=operator)

    def _update(self, letter_id: int, **changes: Any) -> StoredDeadLetter | None:
        if letter_id not in self.letters:
            return None
        self.letters[letter_id] = self.letters[letter_id].model_copy(update=changes)
        return self.letters[letter_id]

    async def republish(
        self, event: TaskEvent, *, cause: str | None = None, replay_for: str | None = None
    ) -> None:
        self.republished.append(event)
        self.replayed_for.append(replay_for)


def stored_dead_letter(letter_id: int, raw: str, app: str | None = None) -> StoredDeadLetter:
    return StoredDeadLetter(
        app=app,
        id=letter_id,
        message_id=f"m-{letter_id}",
        topic="task-events-dlq",
        original_topic="task-events",
        event_id=None,
        type=None,
        task_id=None,
        user_id=None,
        reason=None,
        first_seen=NOW,
        last_seen=NOW,
        seen_count=1,
        status="new",
        replay_count=0,
        replayed_at=None,
        replayed_by=None,
        discarded_at=None,
        discarded_by=None,
        metadata={},
        raw=raw,
    )


def stored_event(event_id: str, task_id: str = "task-1", seq: int = 1) -> StoredEvent:
    return StoredEvent(
        event_id=event_id,
        type="task.created",
        task_id=task_id,
        user_id="user-1",
        timestamp=NOW,
        received_at=NOW,
        payload={"title": "x"},
        source="cli",
        trace_id=None,
        schema_version=1,
        kafka_partition=None,
        kafka_offset=None,
        seq=seq,
    )


@pytest.fixture
def audit() -> FakeAudit:
    return FakeAudit()


async def answers() -> str | None:
    return None


def bootstrap_of(audit: FakeAudit, *, database_check: ReadinessCheck = answers) -> Bootstrap:
    """The service's bootstrap, with the fake in place of Postgres and the sidecar."""

    @asynccontextmanager
    async def fakes(settings: Settings) -> AsyncIterator[Services]:
        yield Services(
            audit_log=audit,
            reader=audit,
            desk=audit,
            republisher=audit,
            database_check=database_check,
            sidecar_check=answers,
            tokens=verifier_from(settings),
        )

    return fakes


OPERATOR = "ops"


@pytest_asyncio.fixture
async def client(audit: FakeAudit) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the audit API as an operator (who may call every route and read every
    user's events; the per-user rules: test_audit_log_service_authorization.py)."""
    app = create_app(Settings(), bootstrap=bootstrap_of(audit))
    async with serving(app, headers=bearer(OPERATOR, operator=True)) as client:
        yield client


# --- probes ------------------------------------------------------------------------------


async def test_the_probes_answer_from_the_running_services(client: httpx.AsyncClient) -> None:
    health = await client.get("/health")
    ready = await client.get("/ready")
    metrics = await client.get("/metrics")

    assert health.json() == {"service": "audit-log-service", "status": "healthy"}
    assert ready.json() == {"status": "ready"}
    assert 'taskevents_audit_events_total{result="stored"}' in metrics.text


async def test_a_database_that_does_not_answer_makes_the_service_unready(
    audit: FakeAudit,
) -> None:
    async def unmigrated() -> str | None:
        return "the schema is not migrated yet: database unavailable: ConnectionRefusedError"

    app = create_app(Settings(), bootstrap=bootstrap_of(audit, database_check=unmigrated))
    async with serving(app) as client:
        response = await client.get("/ready")

    assert response.status_code == 503
    assert list(response.json()["failing"]) == ["database"]


# --- query parameters --------------------------------------------------------------------


def test_the_event_query_defaults_to_the_newest_hundred() -> None:
    assert EventQuery().to_filter() == EventFilter(limit=100)


def test_a_cursor_carries_the_last_row_and_nothing_else_is_accepted() -> None:
    key = EventKey(datetime(2026, 11, 22, 10, 15, 0, 123456, tzinfo=UTC), "e-1")

    assert decode_cursor(encode_cursor(key)) == key
    with pytest.raises(InvalidCursorError):
        decode_cursor("bm90IGpzb24")  # "not json"


async def test_pages_end_with_a_cursor_while_more_rows_follow(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    response = await client.get("/audit/events", params={"limit": 1})

    # The fake always has one row; asking for two (limit + 1) finds no second one.
    assert response.json()["next_cursor"] is None
    assert audit.queries == [EventFilter(limit=2)]


async def test_commit_order_pages_from_a_seq_or_a_stored_event(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    by_seq = await client.get("/audit/events", params={"after_seq": 0, "user_id": "user-1"})
    by_event = await client.get("/audit/events", params={"after_event_id": "e-7", "limit": 3})
    unknown = await client.get("/audit/events", params={"after_event_id": "e-unknown"})

    assert by_seq.json()["next_after_seq"] == 1  # the fake's row has seq 1
    assert by_seq.json()["next_cursor"] is None
    assert by_event.json()["items"][0]["seq"] == 1
    assert unknown.status_code == 404
    assert audit.queries == [
        EventFilter(user_id="user-1", after_seq=0, limit=100),
        ("seq of", "e-7", None),
        EventFilter(after_seq=7, limit=3),
        ("seq of", "e-unknown", None),
    ]


async def test_another_users_event_is_no_position_for_a_user(audit: FakeAudit) -> None:
    app = create_app(Settings(), bootstrap=bootstrap_of(audit))
    async with serving(app, headers=bearer("someone-else")) as client:
        response = await client.get("/audit/events", params={"after_event_id": "e-7"})

    assert response.status_code == 404
    assert audit.queries == [("seq of", "e-7", "someone-else")]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "garbage"}, "cursor"),
        ({"after_seq": 3, "after_event_id": "e-1"}, "at most one of"),
        ({"after_seq": 3, "cursor": "x"}, "at most one of"),
        ({"after_seq": -1}, "after_seq"),
        ({"since": "2026-11-22T10:00:00"}, "since"),  # no time zone
        ({"since": "2026-11-22T10:00:00Z", "until": "2026-11-22T09:00:00Z"}, "since must"),
    ],
)
async def test_bad_ranges_and_cursors_get_422(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/audit/events", params=params)

    assert response.status_code == 422
    assert field in response.text


async def test_stats_default_to_a_day_and_refuse_more_than_a_month(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    assert (await client.get("/audit/stats")).status_code == 200
    [(since, until)] = audit.queries
    assert until - since == timedelta(hours=24)
    too_long = {"since": "2026-01-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"}
    assert (await client.get("/audit/stats", params=too_long)).status_code == 422


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"limit": 501}, "less than or equal to 500"),
        ({"limit": 0}, "greater than or equal to 1"),
        ({"limit": "ten"}, "valid integer"),
        ({"task_id": ""}, "at least 1 character"),
        ({"taskid": "t-1"}, "Extra inputs are not permitted"),
    ],
)
def test_bad_event_query_parameters_are_refused(params: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        EventQuery.model_validate(params)


async def test_the_events_route_passes_the_filters_on(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    response = await client.get(
        "/audit/events", params={"task_id": "t-1", "type": "task.created", "limit": 5}
    )

    assert response.status_code == 200
    assert [item["event_id"] for item in response.json()["items"]] == ["e-1"]
    # One row more than asked for tells whether another page follows.
    assert audit.queries == [EventFilter(task_id="t-1", type="task.created", limit=6)]


async def test_the_events_route_answers_422_with_the_reason(client: httpx.AsyncClient) -> None:
    response = await client.get("/audit/events", params={"limit": 1000})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_an_item_has_the_documented_fields(client: httpx.AsyncClient) -> None:
    response = await client.get("/audit/tasks/task-9/history")

    body = response.json()
    assert body["task_id"] == "task-9"
    assert set(body["items"][0]) >= {
        "event_id",
        "type",
        "task_id",
        "user_id",
        "timestamp",
        "received_at",
        "payload",
        "source",
        "trace_id",
    }


async def test_dead_letters_are_limited_too(client: httpx.AsyncClient, audit: FakeAudit) -> None:
    assert (await client.get("/audit/dead-letters", params={"limit": 501})).status_code == 422
    assert (await client.get("/audit/dead-letters")).json() == {"items": [], "next_cursor": None}
    assert audit.queries == [DeadLetterFilter(limit=101)]


async def test_ids_and_cursors_past_the_bigint_range_are_refused_not_looked_up(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    huge = 2**63  # one past Postgres' bigint: found by fuzzing, once a 500
    for response in (
        await client.get(f"/audit/dead-letters/{huge}"),
        await client.delete(f"/audit/dead-letters/{huge}"),
        await client.post(f"/audit/dead-letters/{huge}/replay"),
        await client.get("/audit/dead-letters", params={"cursor": huge}),
    ):
        assert response.status_code == 422, response.text
    assert audit.queries == []


async def test_a_replay_publishes_the_event_again_and_records_who(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    audit.letters[3] = stored_dead_letter(3, cloud_event(EVENT))

    response = await client.post(
        "/audit/dead-letters/3/replay", headers=bearer("ada", operator=True)
    )

    assert response.status_code == 200
    assert (response.json()["status"], response.json()["replayed_by"]) == ("replayed", "ada")
    [event] = audit.republished
    assert (event.event_id, event.task_id) == ("e-1", "t-1")
    assert audit.replayed_for == [None]  # daprd's letter, of no app: for every subscriber


async def test_a_replay_is_addressed_to_the_app_whose_dead_letter_it_is(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    audit.letters[7] = stored_dead_letter(7, cloud_event(EVENT), app="notification-service")
    audit.letters[8] = stored_dead_letter(8, cloud_event(EVENT), app="websocket-service")

    response = await client.post("/audit/dead-letters/replay", json={})

    assert sorted(response.json()["replayed"]) == [7, 8]
    # One publish per letter, each for its own app only.
    assert sorted(str(a) for a in audit.replayed_for) == [
        "notification-service",
        "websocket-service",
    ]
    assert {e.event_id for e in audit.republished} == {"e-1"}


async def test_what_cannot_be_replayed_gets_409_and_missing_letters_404(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    audit.letters[4] = stored_dead_letter(4, "{oops")
    audit.letters[5] = stored_dead_letter(5, cloud_event(EVENT))
    await client.delete("/audit/dead-letters/5")

    not_an_event = await client.post("/audit/dead-letters/4/replay")
    discarded = await client.post("/audit/dead-letters/5/replay")
    missing = await client.post("/audit/dead-letters/6/replay")

    assert (not_an_event.status_code, discarded.status_code, missing.status_code) == (
        409, 409, 404,
    )  # fmt: skip
    assert "no valid task event" in not_an_event.json()["detail"]
    assert audit.letters[5].discarded_by == OPERATOR
    assert audit.republished == []


async def test_a_bulk_replay_reports_each_letter(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    audit.letters[1] = stored_dead_letter(1, cloud_event(EVENT))
    audit.letters[2] = stored_dead_letter(2, "{oops")

    response = await client.post("/audit/dead-letters/replay", json={"original_topic": "x"})

    assert response.json()["replayed"] == [1]
    assert [f["id"] for f in response.json()["failed"]] == [2]
    assert audit.queries[-1] == DeadLetterFilter(status="new", original_topic="x", limit=500)


# --- SQL ---------------------------------------------------------------------------------


def test_no_filter_selects_the_newest_rows() -> None:
    sql, args = events_query(EventFilter(limit=7))

    assert "WHERE" not in sql
    assert sql.endswith("ORDER BY occurred_at DESC, event_id DESC LIMIT $1")
    assert args == [7]


def test_time_range_and_cursor_become_a_keyset_condition() -> None:
    after = EventKey(NOW, "e-9")

    sql, args = events_query(EventFilter(user_id="u", since=NOW, after=after, limit=5))

    assert "user_id = $1 AND occurred_at >= $2 AND (occurred_at, event_id) < ($3, $4)" in sql
    assert args == ["u", NOW, NOW, "e-9", 5]


def test_commit_order_is_a_seq_condition_oldest_first() -> None:
    sql, args = events_query(EventFilter(user_id="u", after_seq=41, limit=5))

    assert "WHERE user_id = $1 AND commit_seq > $2" in sql
    assert sql.endswith("ORDER BY commit_seq LIMIT $3")
    assert args == ["u", 41, 5]


def test_dead_letter_filters_are_parameters_too() -> None:
    sql, args = dead_letters_query(DeadLetterFilter(status="new", before_id=40, limit=9))

    assert "WHERE status = $1 AND id < $2" in sql
    assert sql.endswith("ORDER BY id DESC LIMIT $3")
    assert args == ["new", 40, 9]


def test_filters_become_numbered_parameters_never_text() -> None:
    sneaky = "t'; DROP TABLE audit_events; --"

    sql, args = events_query(EventFilter(task_id=sneaky, type="task.created", limit=3))

    assert "WHERE task_id = $1 AND type = $2" in sql
    assert sql.endswith("LIMIT $3")
    assert sneaky not in sql
    assert args == [sneaky, "task.created", 3]


# --- subscription routes -----------------------------------------------------------------


def cloud_event(data: Any, **fields: Any) -> str:
    return json.dumps(
        {"id": "ce-1", "source": "cli", "topic": "task-events", "data": data, **fields}
    )


EVENT = {
    "event_id": "e-1",
    "type": "task.created",
    "task_id": "t-1",
    "user_id": "u-1",
    "timestamp": "2026-11-22T10:15:00Z",
}
DAPR_HEADERS = {
    "content-type": "application/cloudevents+json",
    "__partition": "4",
    "__offset": "99",
    "__topic": "task-events",
}


async def test_a_delivered_event_is_recorded_with_its_kafka_position(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    response = await client.post(
        "/events/task-events", content=cloud_event(EVENT), headers=DAPR_HEADERS
    )

    assert response.json() == {"status": "SUCCESS"}
    [(event, delivery)] = audit.events
    assert event.event_id == "e-1"
    assert delivery == Delivery(source="cli", kafka_partition=4, kafka_offset=99)


def bulk(*events: Any) -> dict[str, Any]:
    return {
        "id": "b-1",
        "type": "com.dapr.event.sent.bulk",
        "topic": "task-events",
        "pubsubname": "kafka-pubsub",
        "metadata": {},
        "entries": [
            {
                "entryId": f"entry-{n}",
                "event": event,
                "contentType": "application/cloudevents+json",
                "metadata": {"__partition": "2", "__offset": str(10 + n)},
            }
            for n, event in enumerate(events)
        ],
    }


async def test_a_bulk_delivery_gets_one_status_per_entry(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    good = json.loads(cloud_event(EVENT))
    other = json.loads(cloud_event({**EVENT, "event_id": "e-2"}))
    invalid = json.loads(cloud_event({"type": "task.created"}))

    response = await client.post(
        "/events/task-events/bulk", json=bulk(good, invalid, "not a cloud event", other)
    )

    assert response.json() == {
        "statuses": [
            {"entryId": "entry-0", "status": "SUCCESS"},
            {"entryId": "entry-1", "status": "DROP"},
            {"entryId": "entry-2", "status": "DROP"},
            {"entryId": "entry-3", "status": "SUCCESS"},
        ]
    }
    [batch] = audit.batches  # the valid entries together, in one call
    assert [(e.event_id, d.kafka_offset) for e, d in batch] == [("e-1", 10), ("e-2", 13)]


async def test_a_bulk_delivery_that_is_not_one_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/events/task-events/bulk", json={"id": "x"})

    assert response.status_code == 400


async def test_an_invalid_task_event_is_dropped_not_stored(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    response = await client.post(
        "/events/task-events", content=cloud_event({"type": "task.created"}), headers=DAPR_HEADERS
    )

    assert response.json() == {"status": "DROP"}
    assert audit.events == []
    assert audit.dead_letters == []


async def test_every_dead_letter_is_stored_even_unparsable_ones(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    headers = {**DAPR_HEADERS, "dapr-api-token": "not-metadata"}
    readable = await client.post(
        "/events/task-events-dlq", content=cloud_event(EVENT), headers=headers
    )
    garbage = await client.post("/events/task-events-dlq", content=b"{oops", headers=headers)

    assert readable.json() == garbage.json() == {"status": "SUCCESS"}
    first, second = audit.dead_letters
    assert (first.message_id, first.event_id) == ("ce-1", "e-1")
    assert first.reason is not None
    assert first.reason.startswith("reason unknown: dropped by daprd")
    assert second.raw == "{oops"
    assert second.reason is not None
    assert second.reason.startswith("body is not JSON")
    assert second.original_topic == "task-events"  # from the __topic metadata
    assert first.metadata == {"__partition": "4", "__offset": "99", "__topic": "task-events"}


async def test_filters_with_control_characters_are_a_422_not_a_query(
    client: httpx.AsyncClient, audit: FakeAudit
) -> None:
    # Found by fuzzing: Postgres cannot hold a NUL, and such a filter once answered 500.
    for params in ({"type": "\x00task"}, {"task_id": "t\x00"}, {"user_id": "\x1f"}):
        response = await client.get("/audit/events", params=params)
        assert response.status_code == 422, (params, response.text)
    assert (await client.get("/audit/tasks/t%00/history")).status_code == 422
    assert audit.queries == []
