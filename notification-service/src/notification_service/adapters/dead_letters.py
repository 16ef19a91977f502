"""Dead-lettering with the reason attached (taskevents.dead_letters): the CloudEvent as it
was delivered, unchanged, with the reason and this app's id in Kafka headers, which the
audit log files with the dead letter."""

from __future__ import annotations

import json
from typing import Any

from taskevents.dead_letters import DeadLetterSink


class EnvelopeDeadLetters:
    """notification_service.ports.DeadLetters over the library's sink."""

    def __init__(self, sink: DeadLetterSink) -> None:
        self._sink = sink

    async def dead_letter(self, envelope: dict[str, Any], *, key: str, reason: str) -> None:
        """Raises when the message could not be published (the caller then answers DROP)."""
        await self._sink.dead_letter(json.dumps(envelope).encode(), key=key, reason=reason)
