"""The frames a client receives, as JSON text; README.md documents the format.

Every frame is an object with `v` (the format version) and `kind`."""

from __future__ import annotations

import json
from typing import Any

from taskevents.events import TaskEvent

FRAME_VERSION = 1


def event_frame(event: TaskEvent) -> str:
    # Encoded once per event, whatever the number of connections it goes to.
    return f'{{"v":{FRAME_VERSION},"kind":"event","event":{event.to_json()}}}'


def welcome_frame(user_id: str, connection_id: str) -> str:
    return _frame("welcome", user_id=user_id, connection_id=connection_id)


def error_frame(message: str) -> str:
    return _frame("error", message=message)


def pong_frame() -> str:
    return _frame("pong")


def reply_to_client_message(text: str | None) -> str:
    """The answer to one message from a client. Malformed messages get an error frame and
    the connection stays open."""
    if text is None:
        return error_frame("binary messages are not supported; send JSON text")
    try:
        message = json.loads(text)
    except ValueError:
        return error_frame("message is not JSON")
    if not isinstance(message, dict):
        return error_frame("message must be a JSON object")
    version = message.get("v", FRAME_VERSION)
    if version != FRAME_VERSION:
        return error_frame(f"unsupported frame version {_short(version)}; this server speaks v1")
    kind = message.get("kind")
    if kind == "ping":
        return pong_frame()
    return error_frame(f"unknown message kind {_short(kind)}; known: 'ping'")


def _frame(kind: str, **fields: Any) -> str:
    return json.dumps({"v": FRAME_VERSION, "kind": kind, **fields}, separators=(",", ":"))


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
