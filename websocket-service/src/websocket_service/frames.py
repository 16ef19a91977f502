"""The frames a client receives and the messages it may send, as JSON text; README.md
documents the format.

Every frame is an object with `v` (the format version) and `kind`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from taskevents.events import EventType, TaskEvent

FRAME_VERSION = 1
MAX_FILTER_ITEMS = 200
MAX_FILTER_ITEM_CHARS = 200
KNOWN_TYPES = frozenset(t.value for t in EventType)
ResumeStatus = Literal["complete", "partial", "unavailable"]


def event_frame(event: TaskEvent, *, replayed: bool = False) -> str:
    # Encoded once per event, whatever the number of connections it goes to.
    extra = ',"replayed":true' if replayed else ""
    return f'{{"v":{FRAME_VERSION},"kind":"event"{extra},"event":{event.to_json()}}}'


def welcome_frame(
    user_id: str,
    connection_id: str,
    *,
    watch_all: bool = False,
    heartbeat_seconds: float | None = None,
) -> str:
    return _frame(
        "welcome",
        user_id=user_id,
        connection_id=connection_id,
        watch_all=watch_all,
        heartbeat_seconds=heartbeat_seconds,
    )


def error_frame(message: str) -> str:
    return _frame("error", message=message)


def pong_frame() -> str:
    return _frame("pong")


def heartbeat_frame(now: datetime | None = None) -> str:
    moment = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    return _frame("heartbeat", time=moment)


def resume_frame(
    status: ResumeStatus, *, after_event_id: str, replayed: int, reason: str | None = None
) -> str:
    return _frame(
        "resume", status=status, after_event_id=after_event_id, replayed=replayed, reason=reason
    )


def subscribed_frame(task_ids: frozenset[str], types: frozenset[str]) -> str:
    return _frame("subscribed", task_ids=sorted(task_ids), types=sorted(types))


def batch_frame(frames: list[str]) -> str:
    # The frames are JSON already: join them rather than decode and encode again.
    return f'{{"v":{FRAME_VERSION},"kind":"batch","frames":[{",".join(frames)}]}}'


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class ChangeSubscription:
    """`subscribe` adds task ids / types to the connection's filter, `unsubscribe` removes
    them. An empty filter lets every event of the user through."""

    add: bool
    task_ids: frozenset[str] = field(default_factory=frozenset)
    types: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Malformed:
    reply: str


ClientMessage = Ping | ChangeSubscription | Malformed


def parse_client_message(text: str | None) -> ClientMessage:
    """One message from a client. Malformed messages become an error frame; the
    connection stays open."""
    if text is None:
        return _malformed("binary messages are not supported; send JSON text")
    try:
        message = json.loads(text)
    except ValueError:
        return _malformed("message is not JSON")
    if not isinstance(message, dict):
        return _malformed("message must be a JSON object")
    version = message.get("v", FRAME_VERSION)
    if version != FRAME_VERSION:
        return _malformed(f"unsupported frame version {_short(version)}; this server speaks v1")
    kind = message.get("kind")
    if kind == "ping":
        return Ping()
    if kind in ("subscribe", "unsubscribe"):
        return _subscription(kind, message)
    return _malformed(
        f"unknown message kind {_short(kind)}; known: 'ping', 'subscribe', 'unsubscribe'"
    )


def reply_to_client_message(text: str | None) -> str:
    """The immediate answer to a message that changes nothing (ping, malformed)."""
    message = parse_client_message(text)
    if isinstance(message, Malformed):
        return message.reply
    if isinstance(message, Ping):
        return pong_frame()
    return error_frame("subscription changes are answered by the connection")


def _subscription(kind: str, message: dict[str, Any]) -> ClientMessage:
    unknown = set(message) - {"v", "kind", "task_ids", "types"}
    if unknown:
        return _malformed(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    lists: dict[str, frozenset[str]] = {}
    for name in ("task_ids", "types"):
        value = message.get(name, [])
        if not isinstance(value, list) or not all(
            isinstance(item, str) and 0 < len(item) <= MAX_FILTER_ITEM_CHARS for item in value
        ):
            return _malformed(f"{kind}: {name} must be a list of non-empty strings")
        if len(value) > MAX_FILTER_ITEMS:
            return _malformed(f"{kind}: at most {MAX_FILTER_ITEMS} {name} per message")
        lists[name] = frozenset(value)
    unknown_types = lists["types"] - KNOWN_TYPES
    if unknown_types:
        return _malformed(
            f"{kind}: unknown event type(s) {', '.join(sorted(unknown_types))}; "
            f"known: {', '.join(sorted(KNOWN_TYPES))}"
        )
    if not lists["task_ids"] and not lists["types"]:
        return _malformed(f"{kind}: name at least one task id (task_ids) or type (types)")
    return ChangeSubscription(
        add=kind == "subscribe", task_ids=lists["task_ids"], types=lists["types"]
    )


def _malformed(message: str) -> Malformed:
    return Malformed(error_frame(message))


def _frame(kind: str, **fields: Any) -> str:
    body = {"v": FRAME_VERSION, "kind": kind, **{k: v for k, v in fields.items() if v is not None}}
    return json.dumps(body, separators=(",", ":"))


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
