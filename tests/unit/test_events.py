from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from taskevents.events import EventType, InvalidEventError, TaskEvent, derive_event_id
from taskevents.schema import render

ROOT = Path(__file__).resolve().parents[2]


def event_data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "event_id": "5f0c8c5e-3d8e-4e6c-9a53-0d4f5b1a2c11",
        "type": "task.created",
        "task_id": "task-42",
        "user_id": "user-7",
        "timestamp": "2026-11-22T10:15:00Z",
        "schema_version": 1,
        "payload": {"title": "Pay rent"},
    }
    data.update(overrides)
    return data


def test_design_example_is_valid() -> None:
    event = TaskEvent.from_data(event_data())
    assert event.known_type is EventType.TASK_CREATED
    assert event.timestamp == datetime(2026, 11, 22, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize("kind", [t.value for t in EventType])
def test_every_known_type_is_known(kind: str) -> None:
    assert TaskEvent.from_data(event_data(type=kind)).known_type == EventType(kind)


def test_unknown_future_type_is_accepted_but_not_known() -> None:
    event = TaskEvent.from_data(event_data(type="task.archived"))
    assert event.type == "task.archived"
    assert event.known_type is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("task_id", "", "task_id"),
        ("task_id", "   ", "task_id"),
        ("user_id", None, "user_id"),
        ("type", "Task Created!", "type"),
        ("timestamp", "2026-11-22T10:15:00", "timezone"),
        ("timestamp", "yesterday", "timestamp"),
        ("schema_version", 0, "schema_version"),
        ("payload", ["not", "an", "object"], "payload"),
    ],
)
def test_invalid_fields_are_refused_with_the_field_named(
    field: str, value: Any, message: str
) -> None:
    with pytest.raises(InvalidEventError, match=message):
        TaskEvent.from_data(event_data(**{field: value}))


def test_missing_event_id_gets_a_deterministic_id_from_the_content() -> None:
    data = event_data()
    del data["event_id"]
    first = TaskEvent.from_data(data)
    again = TaskEvent.from_data(dict(reversed(list(data.items()))))
    other = TaskEvent.from_data({**data, "task_id": "task-43"})
    assert first.event_id == again.event_id
    assert first.event_id != other.event_id
    assert first.event_id == derive_event_id(data)


def test_derived_id_of_raw_bytes_is_stable() -> None:
    assert derive_event_id(b"not json") == derive_event_id(b"not json")
    assert derive_event_id(b"not json") != derive_event_id(b"not json!")


def test_non_object_data_is_refused() -> None:
    with pytest.raises(InvalidEventError, match="JSON object"):
        TaskEvent.from_data(["a"])  # type: ignore[arg-type]


def test_round_trip_through_json() -> None:
    event = TaskEvent.create(
        EventType.TASK_COMPLETED, task_id="t", user_id="u", payload={"title": "x"}
    )
    assert TaskEvent.model_validate_json(event.to_json()) == event


def test_published_schema_is_current() -> None:
    published = (ROOT / "docs" / "event-schema.json").read_text()
    assert published == render(), "docs/event-schema.json is stale: run `make schema`"


def test_schema_requires_the_contract_fields() -> None:
    import json

    schema = json.loads(render())
    assert set(schema["required"]) == {"event_id", "type", "task_id", "user_id", "timestamp"}
    assert schema["properties"]["timestamp"]["format"] == "date-time"


def test_create_reports_invalid_fields_as_invalid_event() -> None:
    with pytest.raises(InvalidEventError, match="type"):
        TaskEvent.create("Not A Type", task_id="t", user_id="u")
