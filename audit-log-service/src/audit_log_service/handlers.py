"""What the audit log does with each delivered message: plain functions over the ports."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from audit_log_service.ports import (
    AuditLog,
    DeadLetter,
    Delivery,
    StorageUnavailableError,
    UnstorableError,
)
from taskevents.cloudevents import CloudEvent
from taskevents.events import InvalidEventError, TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome

logger = get_logger(__name__)

# The names under which daprd's Kafka component passes a message's place in the log.
PARTITION_METADATA = "__partition"
OFFSET_METADATA = "__offset"
# On a dead letter, the original message's metadata comes along as Kafka headers and wins
# over the dead-letter topic's own, so __topic names the topic where it failed.
TOPIC_METADATA = "__topic"
# Ids are indexed; a B-tree entry has a size limit, and a valid id is at most 200 characters.
MAX_ID_CHARS = 200
EVENT_FIELDS = ("event_id", "type", "task_id", "user_id")


async def record_event(event: TaskEvent, *, delivery: Delivery, log: AuditLog) -> Outcome:
    try:
        is_new = await log.record_event(event, delivery)
    except StorageUnavailableError as error:
        return Outcome.retry(f"audit log unavailable: {error}")
    except UnstorableError as error:
        return Outcome.drop(f"the database refuses this event: {error}")
    return Outcome.success() if is_new else Outcome.success("already recorded")


async def record_dead_letter(letter: DeadLetter, *, log: AuditLog) -> Outcome:
    try:
        seen_count = await log.record_dead_letter(letter)
    except StorageUnavailableError as error:
        return Outcome.retry(f"audit log unavailable: {error}")
    except UnstorableError as error:
        # Nothing dead-letters the dead-letter topic: this message is gone, say so loudly.
        logger.error(
            "dead letter lost: the database refuses it",
            message_id=letter.message_id,
            error=str(error),
            raw=letter.raw[:500],
        )
        return Outcome.drop(f"the database refuses this dead letter: {error}")
    logger.info(
        "dead letter recorded",
        message_id=letter.message_id,
        original_topic=letter.original_topic,
        event_id=letter.event_id,
        reason=letter.reason,
        seen_count=seen_count,
    )
    return Outcome.success()


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
    return DeadLetter(
        message_id=_message_id(envelope.id, raw.encode()),
        topic=topic,
        original_topic=_original_topic(envelope, metadata, topic),
        raw=_clean(raw),
        metadata=_clean_mapping(metadata),
        event_id=_clean_id(event.event_id),
        type=_clean_id(event.type),
        task_id=_clean_id(event.task_id),
        user_id=_clean_id(event.user_id),
    )


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
    return DeadLetter(
        message_id=_message_id(envelope.id if envelope else "", body),
        topic=topic,
        original_topic=_original_topic(envelope, metadata, topic),
        raw=_clean(body.decode("utf-8", errors="replace")),
        metadata=_clean_mapping(metadata),
        event_id=fields.get("event_id"),
        type=fields.get("type"),
        task_id=fields.get("task_id"),
        user_id=fields.get("user_id"),
        reason=_clean(reason),
    )


def _original_topic(
    envelope: CloudEvent | None, metadata: Mapping[str, str], dead_letter_topic: str
) -> str | None:
    if envelope is not None and envelope.topic:
        return _clean(envelope.topic)
    topic = metadata.get(TOPIC_METADATA)
    return _clean(topic) if topic and topic != dead_letter_topic else None


def _message_id(cloud_event_id: str, body: bytes) -> str:
    if cloud_event_id and len(cloud_event_id) <= MAX_ID_CHARS and "\x00" not in cloud_event_id:
        return cloud_event_id
    # No usable id: the same bytes delivered again must map to the same row.
    return "sha256:" + hashlib.sha256(cloud_event_id.encode() or body).hexdigest()


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


def _clean_id(text: str) -> str:
    return _clean(text)[:MAX_ID_CHARS]


def _clean_mapping(values: Mapping[str, str]) -> dict[str, str]:
    return {_clean(key): _clean(value) for key, value in values.items()}
