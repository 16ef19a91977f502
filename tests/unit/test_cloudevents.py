from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from taskevents.cloudevents import parse_cloud_event
from taskevents.events import InvalidEventError

DATA = {
    "event_id": "e-1",
    "type": "task.updated",
    "task_id": "t-1",
    "user_id": "u-1",
    "timestamp": "2026-11-22T10:15:00+01:00",
    "payload": {"title": "x"},
}


def envelope(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "e-1",
        "specversion": "1.0",
        "source": "recurring-task-service",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "data": DATA,
        "topic": "task-events",
        "pubsubname": "kafka-pubsub",
        "traceid": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate": "",
        "time": "2026-11-22T10:15:01Z",
    }
    body.update(fields)
    return body


def test_dapr_envelope_with_object_data() -> None:
    cloud_event = parse_cloud_event(json.dumps(envelope()).encode())
    assert cloud_event.task_event().task_id == "t-1"
    assert cloud_event.source == "recurring-task-service"
    assert cloud_event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_data_as_json_string_as_sent_without_a_content_type() -> None:
    body = envelope(data=json.dumps(DATA), datacontenttype="text/plain")
    assert parse_cloud_event(body).task_event().event_id == "e-1"


def test_data_base64() -> None:
    encoded = base64.b64encode(json.dumps(DATA).encode()).decode()
    body = envelope(data=None, data_base64=encoded)
    assert parse_cloud_event(body).task_event().user_id == "u-1"


def test_optional_and_unknown_fields_are_tolerated() -> None:
    body = envelope(expiration="2026-11-22T11:00:00Z", subject="x", partitionkey="t-1")
    del body["traceparent"], body["traceid"], body["tracestate"], body["time"]
    cloud_event = parse_cloud_event(body)
    assert cloud_event.trace_id is None
    assert cloud_event.task_event().type == "task.updated"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps(envelope(data=None)).encode(), "no data"),
        (json.dumps(envelope(data="plain text")).encode(), "not JSON"),
        (json.dumps(envelope(data_base64="***")).encode(), "base64"),
        (json.dumps(envelope(data={**DATA, "task_id": ""})).encode(), "task_id"),
    ],
)
def test_unusable_messages_raise_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(InvalidEventError, match=reason):
        parse_cloud_event(body).task_event()


def test_event_without_id_gets_the_same_id_on_redelivery() -> None:
    data = {k: v for k, v in DATA.items() if k != "event_id"}
    first = parse_cloud_event(envelope(id="random-1", data=data)).task_event()
    second = parse_cloud_event(envelope(id="random-2", data=data)).task_event()
    assert first.event_id == second.event_id
