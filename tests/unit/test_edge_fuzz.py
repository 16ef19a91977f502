"""Property: whatever daprd hands the subscription edge — bytes, JSON of any shape,
CloudEvents with broken data — it answers with one of Dapr's statuses, never an error; an
unreadable message is dropped (so Dapr dead-letters it) with a reason; a readable one
reaches the handler."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.status import Outcome
from taskevents.web import BulkEntry, deliver_bulk, deliver_event

STATUSES = {"SUCCESS", "RETRY", "DROP"}
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
event_fields = st.fixed_dictionaries(
    {},
    optional={
        "event_id": json_values | st.text(max_size=40),
        "type": st.sampled_from(["task.created", "task.deleted", "task.other", ""]) | json_values,
        "task_id": st.text(max_size=10) | json_values,
        "user_id": st.text(max_size=10) | json_values,
        "timestamp": st.sampled_from(["2026-11-22T10:15:00Z", "yesterday", ""]) | json_values,
        "schema_version": st.integers(-2, 3) | json_values,
        "payload": json_values,
    },
)
cloud_events = st.fixed_dictionaries(
    {"data": event_fields | json_values},
    optional={
        "id": st.text(max_size=10),
        "type": st.text(max_size=20),
        "source": st.text(max_size=10),
        "datacontenttype": st.sampled_from(["application/json", "text/plain"]),
        "traceparent": st.text(max_size=60),
    },
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(json.dumps)
    | cloud_events.map(json.dumps)
    | event_fields.map(json.dumps)
)


class Recorder:
    def __init__(self) -> None:
        self.handled: list[TaskEvent] = []
        self.invalid: list[str] = []

    async def handle(self, event: TaskEvent, envelope: CloudEvent) -> Outcome:
        self.handled.append(event)
        return Outcome.success()

    async def on_invalid(self, body: bytes, envelope: CloudEvent | None, reason: str) -> Outcome:
        self.invalid.append(reason)
        return Outcome.drop(reason)

    async def handle_bulk(self, entries: Sequence[BulkEntry]) -> list[Outcome]:
        self.handled.extend(e.event for e in entries)
        return [Outcome.success() for _ in entries]


def app_for(recorder: Recorder) -> TestClient:
    app = FastAPI()

    @app.post("/events/one")
    async def one(request: Request) -> JSONResponse:
        return await deliver_event(request, recorder.handle, on_invalid=recorder.on_invalid)

    @app.post("/events/bulk")
    async def bulk(request: Request) -> JSONResponse:
        return await deliver_bulk(request, recorder.handle_bulk)

    return TestClient(app)


FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(body=bodies)
def test_any_message_gets_a_status_and_an_unreadable_one_a_reason(body: str | bytes) -> None:
    recorder = Recorder()
    response = app_for(recorder).post("/events/one", content=body)
    assert response.status_code == 200
    status = response.json()["status"]
    assert status in STATUSES
    if recorder.handled:
        assert (status, recorder.invalid) == ("SUCCESS", [])
    else:
        assert status == "DROP"
        [reason] = recorder.invalid
        assert reason.strip()


@FUZZ
@given(entries=st.lists(cloud_events | json_values, max_size=6))
def test_any_bulk_delivery_gets_one_status_per_entry(entries: list[Any]) -> None:
    recorder = Recorder()
    body = {"entries": [{"entryId": f"e{i}", "event": e} for i, e in enumerate(entries)]}
    response = app_for(recorder).post("/events/bulk", json=body)
    assert response.status_code == 200
    statuses = response.json()["statuses"]
    assert [s["entryId"] for s in statuses] == [f"e{i}" for i in range(len(entries))]
    assert {s["status"] for s in statuses} <= {"SUCCESS", "DROP"}
    assert sum(s["status"] == "SUCCESS" for s in statuses) == len(recorder.handled)
