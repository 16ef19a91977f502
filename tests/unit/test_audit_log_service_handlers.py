from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from audit_log_service.handlers import (
    dead_letter_of_body,
    dead_letter_of_event,
    dead_letter_of_message,
    delivery_of,
    raw_payload_of,
    record_dead_letter,
    record_event,
    record_events,
)
from audit_log_service.ports import (
    DeadLetter,
    Delivery,
    StorageUnavailableError,
    UnstorableError,
)
from taskevents.cloudevents import CloudEvent, parse_cloud_event
from taskevents.events import TaskEvent
from taskevents.status import DaprStatus

DLQ = "task-events-dlq"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# A value the fake database refuses in a batch statement but takes on its own.
REFUSED_IN_BATCHES = "task-refused-in-batches"


@dataclass
class FakeAuditLog:
    """Rows keyed like the tables: events by event_id, dead letters by message_id."""

    events: dict[str, tuple[TaskEvent, Delivery]] = field(default_factory=dict)
    dead_letters: dict[str, DeadLetter] = field(default_factory=dict)
    seen_counts: dict[str, int] = field(default_factory=dict)
    round_trips: int = 0

    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        if event.event_id in self.events:
            return False
        self.events[event.event_id] = (event, delivery)
        return True

    async def record_events(self, batch: Sequence[tuple[TaskEvent, Delivery]]) -> set[str]:
        if any(event.task_id == REFUSED_IN_BATCHES for event, _ in batch):
            raise UnstorableError("CharacterNotInRepertoireError: invalid byte 0x00")
        self.round_trips += 1
        return {
            event.event_id for event, delivery in batch if await self.record_event(event, delivery)
        }

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        self.dead_letters.setdefault(letter.message_id, letter)
        self.seen_counts[letter.message_id] = self.seen_counts.get(letter.message_id, 0) + 1
        return self.seen_counts[letter.message_id]


class UnavailableAuditLog:
    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        raise StorageUnavailableError("ConnectionRefusedError: connect call failed")

    async def record_events(self, batch: Sequence[tuple[TaskEvent, Delivery]]) -> set[str]:
        raise StorageUnavailableError("ConnectionRefusedError: connect call failed")

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        raise StorageUnavailableError("no database connection within 5.0 s")


class RefusingAuditLog:
    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        raise UnstorableError("UntranslatableCharacterError: \\u0000 cannot be converted")

    async def record_events(self, batch: Sequence[tuple[TaskEvent, Delivery]]) -> set[str]:
        raise UnstorableError("UntranslatableCharacterError: \\u0000 cannot be converted")

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        raise UnstorableError("UntranslatableCharacterError: \\u0000 cannot be converted")


def an_event(event_type: str = "task.created", **overrides: Any) -> TaskEvent:
    return TaskEvent.create(
        event_type,
        task_id=overrides.pop("task_id", "task-1"),
        user_id="user-1",
        payload=overrides.pop("payload", {"title": "Pay rent"}),
        **overrides,
    )


def envelope_of(data: Any, **fields: Any) -> CloudEvent:
    body = {
        "id": "ce-1",
        "specversion": "1.0",
        "source": "recurring-task-service",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "topic": "task-events",
        "pubsubname": "kafka-pubsub",
        "traceparent": TRACEPARENT,
        "data": data,
        **fields,
    }
    return parse_cloud_event(json.dumps(body))


# --- task events -------------------------------------------------------------------------


async def test_a_batch_is_one_round_trip_with_a_status_per_event() -> None:
    log = FakeAuditLog()
    first, second = an_event(), an_event()
    await record_event(first, delivery=Delivery(), audit_log=log)

    outcomes = await record_events(
        [(first, Delivery()), (second, Delivery()), (second, Delivery())], audit_log=log
    )

    assert [o.status for o in outcomes] == [DaprStatus.SUCCESS] * 3
    assert [o.reason for o in outcomes] == ["already recorded", None, "already recorded"]
    assert log.round_trips == 1
    assert sorted(log.events) == sorted([first.event_id, second.event_id])


async def test_a_batch_meeting_an_unavailable_database_is_retried_whole() -> None:
    outcomes = await record_events([(an_event(), Delivery())] * 3, audit_log=UnavailableAuditLog())

    assert [o.status for o in outcomes] == [DaprStatus.RETRY] * 3


async def test_a_batch_the_database_refuses_drops_only_the_bad_event() -> None:
    log = FakeAuditLog()
    good, bad = an_event(), an_event(task_id=REFUSED_IN_BATCHES)

    outcomes = await record_events([(good, Delivery()), (bad, Delivery())], audit_log=log)

    assert [o.status for o in outcomes] == [DaprStatus.SUCCESS, DaprStatus.SUCCESS]
    # The fake refuses it only in batches; one by one both are stored: what matters is
    # that the batch was split rather than dropped whole.
    assert sorted(log.events) == sorted([good.event_id, bad.event_id])


async def test_nul_characters_and_lone_surrogates_are_stored_not_refused() -> None:
    log = FakeAuditLog()
    event = an_event(task_id="task-\x00", payload={"title": "a\x00b", "k\x00": ["\ud800"]})

    [outcome] = await record_events([(event, Delivery())], audit_log=log)

    assert outcome.status is DaprStatus.SUCCESS
    stored, _ = log.events[event.event_id]
    assert stored.task_id == "task-\ufffd"
    assert stored.payload == {"title": "a\ufffdb", "k\ufffd": ["?"]}
    json.dumps(stored.model_dump(mode="json")).encode("utf-8")  # UTF-8, no NUL escape left
    assert "\\u0000" not in json.dumps(stored.payload)


def test_a_raw_dead_letter_is_unwrapped_and_keeps_its_own_id() -> None:
    message = json.dumps({"id": "ce-9", "topic": "task-events", "data": {"event_id": "e"}})
    wrapper = {
        "id": "random-per-delivery",
        "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(message.encode()).decode(),
    }

    unwrapped = raw_payload_of(json.dumps(wrapper).encode())
    letter = dead_letter_of_message(unwrapped, topic=DLQ, metadata={})

    assert unwrapped == message.encode()
    assert (letter.message_id, letter.raw, letter.event_id) == ("ce-9", message, "e")
    assert letter.reason is not None  # no task_id: not a valid event
    not_json = dead_letter_of_message(b"not json", topic=DLQ, metadata={"__topic": "task-events"})
    assert not_json.raw == "not json"
    assert not_json.original_topic == "task-events"


async def test_an_event_is_recorded_with_where_it_came_from() -> None:
    log = FakeAuditLog()
    event = an_event()
    delivery = Delivery(source="cli", trace_id="abc", kafka_partition=2, kafka_offset=17)

    outcome = await record_event(event, delivery=delivery, audit_log=log)

    assert outcome.status is DaprStatus.SUCCESS
    assert log.events == {event.event_id: (event, delivery)}


async def test_a_redelivered_event_leaves_one_row_and_still_succeeds() -> None:
    log = FakeAuditLog()
    event = an_event()

    first = await record_event(event, delivery=Delivery(kafka_offset=1), audit_log=log)
    second = await record_event(event, delivery=Delivery(kafka_offset=9), audit_log=log)

    assert (first.status, second.status) == (DaprStatus.SUCCESS, DaprStatus.SUCCESS)
    assert second.reason == "already recorded"
    assert list(log.events) == [event.event_id]
    assert log.events[event.event_id][1].kafka_offset == 1


async def test_an_unknown_event_type_is_kept() -> None:
    log = FakeAuditLog()
    event = an_event("task.archived")

    outcome = await record_event(event, delivery=Delivery(), audit_log=log)

    assert outcome.status is DaprStatus.SUCCESS
    assert log.events[event.event_id][0].type == "task.archived"


async def test_database_unavailable_means_retry() -> None:
    outcome = await record_event(an_event(), delivery=Delivery(), audit_log=UnavailableAuditLog())

    assert outcome.status is DaprStatus.RETRY
    assert outcome.reason is not None
    assert "ConnectionRefusedError" in outcome.reason


async def test_values_the_database_refuses_for_good_are_dropped() -> None:
    outcome = await record_event(an_event(), delivery=Delivery(), audit_log=RefusingAuditLog())

    assert outcome.status is DaprStatus.DROP


def test_delivery_reads_the_envelope_and_the_kafka_metadata() -> None:
    envelope = envelope_of(an_event().model_dump(mode="json"))

    delivery = delivery_of(envelope, {"__partition": "3", "__offset": "42", "__key": "task-1"})

    assert delivery == Delivery(
        source="recurring-task-service",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        kafka_partition=3,
        kafka_offset=42,
    )


@pytest.mark.parametrize(
    "metadata", [{}, {"__partition": "x", "__offset": ""}, {"partition": "1", "offset": "2"}]
)
def test_delivery_without_usable_kafka_metadata_has_none(metadata: dict[str, str]) -> None:
    envelope = envelope_of(an_event().model_dump(mode="json"), source="", traceparent=None)

    delivery = delivery_of(envelope, metadata)

    assert delivery == Delivery(source=None, trace_id=None)


# --- dead letters ------------------------------------------------------------------------


async def test_a_dead_letter_is_kept_and_a_redelivery_counted() -> None:
    log = FakeAuditLog()
    letter = DeadLetter(message_id="ce-1", topic=DLQ, raw="{}")

    first = await record_dead_letter(letter, audit_log=log)
    second = await record_dead_letter(letter, audit_log=log)

    assert (first.status, second.status) == (DaprStatus.SUCCESS, DaprStatus.SUCCESS)
    assert list(log.dead_letters) == ["ce-1"]
    assert log.seen_counts["ce-1"] == 2


async def test_a_dead_letter_meeting_an_unavailable_database_is_retried() -> None:
    letter = DeadLetter(message_id="ce-1", topic=DLQ, raw="{}")

    outcome = await record_dead_letter(letter, audit_log=UnavailableAuditLog())

    assert outcome.status is DaprStatus.RETRY


async def test_a_dead_letter_the_database_refuses_is_dropped() -> None:
    letter = DeadLetter(message_id="ce-1", topic=DLQ, raw="{}")

    outcome = await record_dead_letter(letter, audit_log=RefusingAuditLog())

    assert outcome.status is DaprStatus.DROP


def test_a_readable_dead_letter_keeps_the_envelope_and_the_event_ids() -> None:
    event = an_event()
    envelope = envelope_of(event.model_dump(mode="json"), id="ce-7")
    metadata = {"__topic": "task-events", "__offset": "5"}

    letter = dead_letter_of_event(event, envelope, topic=DLQ, metadata=metadata)

    assert letter.message_id == "ce-7"
    assert letter.topic == DLQ
    assert letter.original_topic == "task-events"
    assert (letter.event_id, letter.type, letter.task_id, letter.user_id) == (
        event.event_id,
        "task.created",
        "task-1",
        "user-1",
    )
    assert letter.reason == (
        "reason unknown: dropped by daprd of a subscriber (Dapr's dead letters name no app)"
    )
    assert letter.app is None
    assert letter.metadata == metadata
    assert parse_cloud_event(letter.raw) == envelope


def test_a_dead_letter_without_a_cloud_event_id_gets_a_stable_one() -> None:
    event = an_event()
    envelope = envelope_of(event.model_dump(mode="json"), id="")

    first = dead_letter_of_event(event, envelope, topic=DLQ, metadata={})
    again = dead_letter_of_event(event, envelope, topic=DLQ, metadata={"__offset": "6"})

    assert first.message_id.startswith("sha256:")
    assert first.message_id == again.message_id


def test_an_unparsable_dead_letter_is_kept_whole_with_its_reason() -> None:
    body = b"not json at all"

    letter = dead_letter_of_body(body, None, "body is not JSON", topic=DLQ, metadata={})

    assert letter.raw == "not json at all"
    assert letter.reason == "body is not JSON"
    assert letter.message_id.startswith("sha256:")
    assert letter.original_topic is None
    assert (letter.event_id, letter.type, letter.task_id, letter.user_id) == (None,) * 4


def test_the_same_unparsable_bytes_map_to_the_same_dead_letter() -> None:
    one = dead_letter_of_body(b"garbage", None, "x", topic=DLQ, metadata={})
    same = dead_letter_of_body(b"garbage", None, "x", topic=DLQ, metadata={})
    other = dead_letter_of_body(b"garbage!", None, "x", topic=DLQ, metadata={})

    assert one.message_id == same.message_id != other.message_id


def test_an_invalid_event_in_the_dlq_keeps_the_ids_it_has() -> None:
    data = {"event_id": "bad-1", "type": "task.created", "user_id": "u", "task_id": 42}
    envelope = envelope_of(data, id="ce-9")

    letter = dead_letter_of_body(
        envelope.model_dump_json().encode(),
        envelope,
        "invalid event: task_id: Input should be a valid string",
        topic=DLQ,
        metadata={},
    )

    assert letter.message_id == "ce-9"
    assert letter.original_topic == "task-events"
    assert (letter.event_id, letter.type, letter.task_id, letter.user_id) == (
        "bad-1",
        "task.created",
        None,
        "u",
    )
    assert letter.reason is not None
    assert "task_id" in letter.reason


def test_the_original_topic_falls_back_to_the_kafka_metadata() -> None:
    envelope = envelope_of(None, topic=None)

    from_metadata = dead_letter_of_body(
        b"{}", envelope, "no data", topic=DLQ, metadata={"__topic": "task-events"}
    )
    only_the_dlq = dead_letter_of_body(
        b"{}", envelope, "no data", topic=DLQ, metadata={"__topic": DLQ}
    )

    assert from_metadata.original_topic == "task-events"
    assert only_the_dlq.original_topic is None


def test_nul_characters_never_reach_the_database() -> None:
    body = b'{"id": "ce-\x00", "data": "x\x00y"}\xff'
    metadata = {"__key": "k\x00"}

    letter = dead_letter_of_body(body, None, "reason \x00", topic=DLQ, metadata=metadata)

    stored_text = [letter.raw, letter.reason or "", *letter.metadata, *letter.metadata.values()]
    assert not any("\x00" in text for text in stored_text)
    assert letter.raw.startswith('{"id": "ce-')


def test_lone_surrogates_never_reach_the_database() -> None:
    data = {"event_id": "e-\ud800", "type": "task.created", "user_id": "u"}
    envelope = envelope_of(data)

    letter = dead_letter_of_body(b"{}", envelope, "invalid", topic=DLQ, metadata={})

    assert letter.event_id is not None
    letter.event_id.encode("utf-8")  # would raise on a lone surrogate


def test_an_oversized_cloud_event_id_is_hashed() -> None:
    envelope = envelope_of(None, id="x" * 5000)

    letter = dead_letter_of_body(b"{}", envelope, "no data", topic=DLQ, metadata={})

    assert letter.message_id.startswith("sha256:")
    assert len(letter.message_id) < 100


def test_a_dead_letter_keeps_the_reason_its_service_gave() -> None:
    event = TaskEvent.create("task.created", task_id="t", user_id="u")
    envelope = parse_cloud_event(
        {"id": event.event_id, "topic": "task-events", "data": json.loads(event.to_json())}
    )
    letter = dead_letter_of_event(
        event, envelope, topic=DLQ, metadata={"dead-letter-reason": "550 5.1.1 no such user"}
    )
    assert letter.reason == "550 5.1.1 no such user"
    assert dead_letter_of_event(event, envelope, topic=DLQ, metadata={}).reason == (
        "reason unknown: dropped by daprd of a subscriber (Dapr's dead letters name no app)"
    )


def test_a_dead_letter_names_the_app_that_published_it_and_is_its_own_per_app() -> None:
    event = an_event()
    envelope = envelope_of(event.model_dump(mode="json"), id="ce-8")

    def by(app: str) -> DeadLetter:
        metadata = {"dead-letter-reason": "no", "dead-letter-source": app}
        return dead_letter_of_event(event, envelope, topic=DLQ, metadata=metadata)

    recurring, audit = by("recurring-task-service"), by("audit-log-service")

    assert (recurring.app, recurring.reason) == ("recurring-task-service", "no")
    # Two apps that gave up on one message: two letters, each with its reason.
    assert (recurring.message_id, audit.message_id) == (
        "ce-8@recurring-task-service",
        "ce-8@audit-log-service",
    )


def test_a_dead_letter_daprd_made_says_that_its_reason_and_app_are_unknown() -> None:
    event = an_event()
    envelope = envelope_of(event.model_dump(mode="json"), id="ce-9")
    # As delivered here: pubsubName is the delivering sidecar's own component, whichever
    # daprd made the letter.
    metadata = {"pubsubname": "kafka-pubsub", "__key": "task-1", "__partition": "3"}

    letter = dead_letter_of_event(event, envelope, topic=DLQ, metadata=metadata)

    assert (letter.app, letter.message_id, letter.reason) == (
        None,
        "ce-9",
        "reason unknown: dropped by daprd of a subscriber (Dapr's dead letters name no app)",
    )
