"""The CloudEvent envelope in which daprd delivers each message, tolerant of the optional
fields Dapr adds (traceparent, tracestate, expiration, …) and of `data` arriving as an
object, as a JSON string, or base64-encoded."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from taskevents.events import InvalidEventError, TaskEvent, derive_event_id

# The CloudEvent extension attribute that addresses an operator's replay of a dead letter to
# the app that gave up on it (the audit log keeps one letter per message and app); the other
# subscribers acknowledge it without handling it (taskevents.web). A replay of a letter that
# names no app (daprd made it) carries none and goes to every subscriber.
REPLAY_FOR_ATTRIBUTE = "replayfor"


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = ""
    source: str = ""
    type: str = ""
    specversion: str = "1.0"
    datacontenttype: str | None = None
    data: Any = None
    data_base64: str | None = None
    topic: str | None = None
    pubsubname: str | None = None
    time: str | None = None
    traceid: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    expiration: str | None = None

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id (the second field of `traceparent`), when there is one."""
        for header in (self.traceparent, self.traceid):
            if header and header.count("-") == 3:
                return header.split("-")[1]
        return None

    @property
    def replay_for(self) -> str | None:
        """The app a replayed dead letter is for (the `replayfor` extension); None for any
        other message, and for a replay meant for every subscriber."""
        value = (self.model_extra or {}).get(REPLAY_FOR_ATTRIBUTE)
        return value if isinstance(value, str) and value else None

    def decoded_data(self) -> Any:
        """`data` as a Python value: objects stay objects, JSON text is parsed, base64 is
        decoded and then parsed when it is JSON."""
        if self.data_base64 is not None:
            try:
                raw = base64.b64decode(self.data_base64, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidEventError("data_base64 is not valid base64") from None
            return _maybe_json(raw.decode("utf-8", errors="replace"))
        if isinstance(self.data, str):
            return _maybe_json(self.data)
        return self.data

    def task_event(self) -> TaskEvent:
        data = self.decoded_data()
        if data is None:
            raise InvalidEventError("the CloudEvent carries no data")
        if isinstance(data, str):
            raise InvalidEventError("event data is not JSON: " + _excerpt(data))
        if isinstance(data, Mapping) and not data.get("event_id") and self.id:
            # The fallback id depends on the content only, never on the envelope id,
            # which is random per publish.
            data = {**data, "event_id": derive_event_id(data)}
        return TaskEvent.from_data(data)


def parse_cloud_event(body: bytes | str | Mapping[str, Any]) -> CloudEvent:
    """Parse the body daprd posts to a subscription route."""
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InvalidEventError(f"body is not JSON: {error}") from None
    if not isinstance(body, Mapping):
        raise InvalidEventError(f"a CloudEvent must be a JSON object, not {type(body).__name__}")
    try:
        return CloudEvent.model_validate(body)
    except ValidationError as error:
        raise InvalidEventError(f"invalid CloudEvent: {error.errors(include_url=False)}") from None


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")
