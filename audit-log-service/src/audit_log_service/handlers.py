"""What the audit log does with each delivered message: plain functions over the ports."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from audit_log_service.metrics import DEAD_LETTER_ACTIONS, DEAD_LETTERS, EVENTS
from audit_log_service.ports import (
    AuditLog,
    DeadLetter,
    DeadLetterDesk,
    Delivery,
    EventRepublisher,
    StorageUnavailableError,
    StoredDeadLetter,
    UnstorableError,
)
from taskevents.cloudevents import CloudEvent, parse_cloud_event
from taskevents.events import InvalidEventError, TaskEvent
from taskevents.logging import get_logger
from taskevents.status import DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER, Outcome

log = get_logger(__name__)

# The names under which daprd's Kafka component passes a message's place in the log.
PARTITION_METADATA = "__partition"
OFFSET_METADATA = "__offset"
# On a dead letter, the original message's metadata comes along as Kafka headers and wins
# over the dead-letter topic's own, so __topic names the topic where it failed.
TOPIC_METADATA = "__topic"
# Ids are indexed; a B-tree entry has a size limit, and a valid id is at most 200 characters.
MAX_ID_CHARS = 200
EVENT_FIELDS = ("event_id", "type", "task_id", "user_id")


async def record_event(event: TaskEvent, *, delivery: Delivery, audit_log: AuditLog) -> Outcome:
    try:
        is_new = await audit_log.record_event(storable(event), delivery)
    except StorageUnavailableError as error:
        return Outcome.retry(f"audit log unavailable: {error}")
    except UnstorableError as error:
        return Outcome.drop(f"the database refuses this event: {error}")
    return _recorded(is_new)


def _recorded(is_new: bool) -> Outcome:
    if is_new:
        EVENTS.labels("stored").inc()
        return Outcome.success()
    EVENTS.labels("duplicate").inc()
    return Outcome.success("already recorded")


async def record_events(
    batch: Sequence[tuple[TaskEvent, Delivery]], *, audit_log: AuditLog
) -> list[Outcome]:
    """One outcome per event, in order. The batch is written in one round trip; SUCCESS only
    once it committed, RETRY for all when the database is away. Should the database refuse
    the batch for good (one bad value fails the whole statement), each event is written on
    its own so that only the bad ones are dropped."""
    if not batch:
        return []
    batch = [(storable(event), delivery) for event, delivery in batch]
    try:
        new_ids = await audit_log.record_events(batch)
    except StorageUnavailableError as error:
        return [Outcome.retry(f"audit log unavailable: {error}")] * len(batch)
    except UnstorableError as error:
        log.warning("the database refuses a batch; writing it event by event", error=str(error))
        return [
            await record_event(event, delivery=delivery, audit_log=audit_log)
            for event, delivery in batch
        ]
    seen: set[str] = set()
    outcomes = []
    for event, _ in batch:
        is_new = event.event_id in new_ids and event.event_id not in seen
        seen.add(event.event_id)
        outcomes.append(_recorded(is_new))
    return outcomes


class ReplayRefusedError(Exception):
    """This dead letter cannot be replayed; the message says why."""


async def replay_dead_letter(
    letter_id: int, *, operator: str, desk: DeadLetterDesk, publisher: EventRepublisher
) -> StoredDeadLetter | None:
    """Publish the dead letter's event to task-events again, with its own event id and task
    id as the key, then mark it replayed. None when there is no such letter. The replay is
    addressed to the app that gave up on the message (the letter's `app`): the other
    subscribers handled it already and acknowledge it unhandled (taskevents.web). A letter
    that names no app (daprd made it) is replayed to every subscriber."""
    letter = await desk.get_dead_letter(letter_id)
    if letter is None:
        return None
    if letter.status == "discarded":
        raise ReplayRefusedError(f"dead letter {letter_id} was discarded")
    event = event_of_dead_letter(letter)
    await publisher.republish(
        event, cause=parse_cloud_event(letter.raw).traceparent, replay_for=letter.app
    )
    DEAD_LETTER_ACTIONS.labels("replayed").inc()
    log.info(
        "dead letter replayed",
        dead_letter_id=letter_id,
        event_id=event.event_id,
        task_id=event.task_id,
        replay_for=letter.app,
        operator=operator,
    )
    return await desk.mark_replayed(letter_id, operator)


async def discard_dead_letter(
    letter_id: int, *, operator: str, desk: DeadLetterDesk
) -> StoredDeadLetter | None:
    letter = await desk.mark_discarded(letter_id, operator)
    if letter is not None:
        DEAD_LETTER_ACTIONS.labels("discarded").inc()
        log.info("dead letter discarded", dead_letter_id=letter_id, operator=operator)
    return letter


def event_of_dead_letter(letter: StoredDeadLetter) -> TaskEvent:
    """The task event inside a stored dead letter (its `raw` is the whole CloudEvent)."""
    try:
        return parse_cloud_event(letter.raw).task_event()
    except InvalidEventError as error:
        raise ReplayRefusedError(
            f"dead letter {letter.id} holds no valid task event, so there is nothing to "
            f"replay: {error}"
        ) from None


async def record_dead_letter(letter: DeadLetter, *, audit_log: AuditLog) -> Outcome:
    try:
        seen_count = await audit_log.record_dead_letter(letter)
    except StorageUnavailableError as error:
        return Outcome.retry(f"audit log unavailable: {error}")
    except UnstorableError as error:
        # Nothing dead-letters the dead-letter topic: this message is gone, say so loudly.
        DEAD_LETTERS.labels("lost").inc()
        log.error(
            "dead letter lost: the database refuses it",
            message_id=letter.message_id,
            error=str(error),
            raw=letter.raw[:500],
        )
        return Outcome.drop(f"the database refuses this dead letter: {error}")
    DEAD_LETTERS.labels("filed" if seen_count == 1 else "seen_again").inc()
    log.info(
        "dead letter recorded",
        message_id=letter.message_id,
        original_topic=letter.original_topic,
        event_id=letter.event_id,
        reason=letter.reason,
        seen_count=seen_count,
    )
    return Outcome.success()


async def file_dead_letter(
    body: bytes, *, topic: str, metadata: Mapping[str, str], audit_log: AuditLog
) -> Outcome:
    """Whatever reached the dead-letter topic (posted raw by daprd) becomes a dead letter."""
    letter = dead_letter_of_message(raw_payload_of(body), topic=topic, metadata=metadata)
    return await record_dead_letter(letter, audit_log=audit_log)


def delivery_of(envelope: CloudEvent, metadata: Mapping[str, str]) -> Delivery:
    return Delivery(
        source=envelope.source or None,
        trace_id=envelope.trace_id,
        kafka_partition=_int_or_none(metadata.get(PARTITION_METADATA)),
        kafka_offset=_int_or_none(metadata.get(OFFSET_METADATA)),
    )


def dead_letter_of_event(
    event: TaskEvent, envelope: CloudEvent, *, topic: str, metadata: Mapping[str, str]
) -> DeadLetter:
    """A dead letter whose event could be read. The route hands over the parsed envelope,
    not the bytes, so `raw` is the envelope written back as JSON (same content, same keys)."""
    raw = json.dumps(
        envelope.model_dump(mode="json", exclude_unset=True), sort_keys=True, ensure_ascii=False
    )
    app = app_that_gave_up(metadata)
    return DeadLetter(
        message_id=_message_id(envelope.id, raw.encode(), app),
        topic=topic,
        original_topic=_original_topic(envelope, metadata, topic),
        raw=_clean(raw),
        metadata=_clean_mapping(metadata),
        event_id=_clean_id(event.event_id),
        type=_clean_id(event.type),
        task_id=_clean_id(event.task_id),
        user_id=_clean_id(event.user_id),
        reason=_reason_in(metadata) or _reason_unknown(metadata, app),
        app=app,
    )


def _reason_in(metadata: Mapping[str, str]) -> str | None:
    """The reason a service gave when it dead-lettered the message itself."""
    reason = metadata.get(DEAD_LETTER_REASON_HEADER)
    return _clean(reason) if reason else None


def app_that_gave_up(metadata: Mapping[str, str]) -> str | None:
    """The app that dead-lettered the message, when it says so (it published the dead
    letter itself). None: daprd did. Its dead letter carries the original message's
    metadata as headers, `pubsubName` among them — the component, which would name
    websocket-service — but the sidecar that delivers it here overwrites `pubsubName` with
    its own component's name, so nothing that reaches this app tells which daprd it was."""
    source = metadata.get(DEAD_LETTER_SOURCE_HEADER)
    return _clean_id(source) if source else None


def _reason_unknown(metadata: Mapping[str, str], app: str | None) -> str:
    """What can be said of a dead letter daprd made: its retries ran out, or the app
    answered DROP (or 404) — daprd records neither which, nor why, nor whose."""
    if app:
        return f"reason unknown: dead-lettered by {app}"
    return "reason unknown: dropped by daprd of a subscriber (Dapr's dead letters name no app)"


def raw_payload_of(body: bytes) -> bytes:
    """The message itself out of what daprd posts for a `rawPayload` subscription: the
    bytes as they are on the topic, base64-encoded in an envelope of daprd's own (whose id
    is new on every delivery, so it is no use as a key)."""
    try:
        wrapper = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body
    if isinstance(wrapper, Mapping) and isinstance(wrapper.get("data_base64"), str):
        try:
            return base64.b64decode(wrapper["data_base64"], validate=True)
        except (binascii.Error, ValueError):
            return body
    return body


def dead_letter_of_message(
    message: bytes, *, topic: str, metadata: Mapping[str, str]
) -> DeadLetter:
    """A dead letter from the bytes that reached the dead-letter topic: whatever they are,
    the letter keeps them whole, with the event's ids when they can be read."""
    envelope: CloudEvent | None = None
    try:
        envelope = parse_cloud_event(message)
        event = envelope.task_event()
    except InvalidEventError as error:
        return dead_letter_of_body(message, envelope, str(error), topic=topic, metadata=metadata)
    letter = dead_letter_of_event(event, envelope, topic=topic, metadata=metadata)
    return dataclasses.replace(letter, raw=_clean(message.decode("utf-8", errors="replace")))


def dead_letter_of_body(
    body: bytes,
    envelope: CloudEvent | None,
    reason: str,
    *,
    topic: str,
    metadata: Mapping[str, str],
) -> DeadLetter:
    """A dead letter that is not a valid event, or not even a CloudEvent: keep it all, with
    whatever ids can still be read from it."""
    fields = _readable_event_fields(envelope)
    app = app_that_gave_up(metadata)
    return DeadLetter(
        message_id=_message_id(envelope.id if envelope else "", body, app),
        topic=topic,
        original_topic=_original_topic(envelope, metadata, topic),
        raw=_clean(body.decode("utf-8", errors="replace")),
        metadata=_clean_mapping(metadata),
        event_id=fields.get("event_id"),
        type=fields.get("type"),
        task_id=fields.get("task_id"),
        user_id=fields.get("user_id"),
        reason=_reason_in(metadata) or _clean(reason),
        app=app,
    )


def _original_topic(
    envelope: CloudEvent | None, metadata: Mapping[str, str], dead_letter_topic: str
) -> str | None:
    if envelope is not None and envelope.topic:
        return _clean(envelope.topic)
    topic = metadata.get(TOPIC_METADATA)
    return _clean(topic) if topic and topic != dead_letter_topic else None


def _message_id(cloud_event_id: str, body: bytes, app: str | None = None) -> str:
    """The dead letter's identity: the same message given up on again by the same app is
    one row; given up on by two apps, two rows (each says why)."""
    by = f"@{app}" if app else ""
    if cloud_event_id and len(cloud_event_id) <= MAX_ID_CHARS and "\x00" not in cloud_event_id:
        return cloud_event_id + by
    # No usable id: the same bytes delivered again must map to the same row.
    return "sha256:" + hashlib.sha256(cloud_event_id.encode() or body).hexdigest() + by


def _readable_event_fields(envelope: CloudEvent | None) -> dict[str, str | None]:
    if envelope is None:
        return {}
    try:
        data = envelope.decoded_data()
    except InvalidEventError:
        return {}
    if not isinstance(data, Mapping):
        return {}
    return {
        name: _clean_id(value) if isinstance(value, str) else None
        for name in EVENT_FIELDS
        if (value := data.get(name)) is not None
    }


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# Postgres text and jsonb hold neither NUL characters nor lone surrogates (which UTF-8
# cannot encode); a dead letter must be storable anyway.
def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd").encode("utf-8", errors="replace").decode("utf-8")


def storable(event: TaskEvent) -> TaskEvent:
    """The event as the database can keep it: legal JSON may hold NUL characters and lone
    surrogates, Postgres' text and jsonb cannot, and the system of record refuses no event
    for them — each such character becomes U+FFFD. An event without one is returned as is."""
    fields = {name: getattr(event, name) for name in EVENT_FIELDS}
    cleaned = {name: _clean(value) for name, value in fields.items()}
    payload = _clean_json(event.payload)
    if cleaned == fields and payload == event.payload:
        return event
    return event.model_copy(update={**cleaned, "payload": payload})


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, list):
        return [_clean_json(item) for item in value]
    if isinstance(value, dict):
        return {_clean(str(key)): _clean_json(item) for key, item in value.items()}
    return value


def _clean_id(text: str) -> str:
    return _clean(text)[:MAX_ID_CHARS]


def _clean_mapping(values: Mapping[str, str]) -> dict[str, str]:
    return {_clean(key): _clean(value) for key, value in values.items()}
