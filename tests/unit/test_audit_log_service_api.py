"""The audit log's HTTP edge with fake storage: query parameter validation, the SQL the
filters turn into, and the subscription routes passing daprd's metadata to the handlers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from audit_log_service.adapters.postgres import events_query
from audit_log_service.api.dead_letters import dead_letters_router
from audit_log_service.api.events import EventQuery, events_router
from audit_log_service.api.subscriptions import add_subscription_routes
from audit_log_service.ports import (
    DeadLetter,
    Delivery,
    EventFilter,
    StoredDeadLetter,
    StoredEvent,
)
from audit_log_service.settings import Settings
from taskevents.events import TaskEvent

NOW = datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


@dataclass
class FakeAudit:
    events: list[tuple[TaskEvent, Delivery]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    queries: list[Any] = field(default_factory=list)

    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        self.events.append((event, delivery))
        return True

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        self.dead_letters.append(letter)
        return 1

    async def list_events(self, where: EventFilter) -> list[StoredEvent]:
        self.queries.append(where)
        return [stored_event("e-1")]

    async def task_history(self, task_id: str, limit: int) -> list[StoredEvent]:
        self.queries.append((task_id, limit))
        return [stored_event("e-1", task_id=task_id)]

    async def list_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        self.queries.append(limit)
        return []


def stored_event(event_id: str, task_id: str = "task-1") -> StoredEvent:
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
    )


@pytest.fixture
def audit() -> FakeAudit:
    return FakeAudit()


@pytest.fixture
def client(audit: FakeAudit) -> httpx.AsyncClient:
    app = FastAPI()
    add_subscription_routes(app, audit_log=audit, settings=Settings())
    app.include_router(events_router(audit))
    app.include_router(dead_letters_router(audit))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit")


# --- query parameters --------------------------------------------------------------------


def test_the_event_query_defaults_to_the_newest_hundred() -> None:
    assert EventQuery().to_filter() == EventFilter(limit=100)


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
    assert audit.queries == [EventFilter(task_id="t-1", type="task.created", limit=5)]


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
    assert (await client.get("/audit/dead-letters")).json() == {"items": []}
    assert audit.queries == [100]


# --- SQL ---------------------------------------------------------------------------------


def test_no_filter_selects_the_newest_rows() -> None:
    sql, args = events_query(EventFilter(limit=7))

    assert "WHERE" not in sql
    assert sql.endswith("ORDER BY occurred_at DESC, event_id DESC LIMIT $1")
    assert args == [7]


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
    assert (first.message_id, first.event_id, first.reason) == ("ce-1", "e-1", None)
    assert second.raw == "{oops"
    assert second.reason is not None
    assert second.reason.startswith("body is not JSON")
    assert second.original_topic == "task-events"  # from the __topic metadata
    assert first.metadata == {"__partition": "4", "__offset": "99", "__topic": "task-events"}
