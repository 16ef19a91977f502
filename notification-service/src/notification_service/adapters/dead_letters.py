"""Dead-lettering with the reason attached. Dapr's own dead-lettering (on DROP) publishes
the message as it came, with no word on why; this publishes the same CloudEvent, unchanged
(`rawPayload`), to the dead-letter topic with the reason in a Kafka header, which the audit
log keeps among the dead letter's metadata."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from taskevents.logging import get_logger
from taskevents.publisher import LazyDaprClient
from taskevents.status import DEAD_LETTER_REASON_HEADER

log = get_logger(__name__)

SOURCE_HEADER = "dead-letter-source"
MAX_REASON_CHARS = 1000


class DaprDeadLetters:
    def __init__(
        self,
        *,
        pubsub_name: str,
        topic: str,
        source: str,
        http_port: int,
        grpc_port: int,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._pubsub_name = pubsub_name
        self._topic = topic
        self._source = source
        self._dapr = LazyDaprClient(http_port=http_port, grpc_port=grpc_port)
        self._timeout = timeout_seconds

    async def dead_letter(self, envelope: dict[str, Any], *, key: str, reason: str) -> None:
        """Raises when the message could not be published (the caller then answers DROP)."""
        client = await self._dapr.get()
        async with asyncio.timeout(self._timeout):
            await client.publish_event(
                pubsub_name=self._pubsub_name,
                topic_name=self._topic,
                data=json.dumps(envelope).encode(),
                publish_metadata={
                    "rawPayload": "true",
                    "partitionKey": key,
                    DEAD_LETTER_REASON_HEADER: reason[:MAX_REASON_CHARS],
                    SOURCE_HEADER: self._source,
                },
                data_content_type="application/cloudevents+json",
            )

    async def close(self) -> None:
        await self._dapr.close()
