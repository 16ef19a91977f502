"""Dead letters that say why and who: a subscriber that gives up on a message publishes it to
the dead-letter topic itself — the bytes as delivered (`rawPayload`), under the message's
own partition key — with the reason and its app id in Kafka headers, then answers SUCCESS.
Dapr's own dead-lettering (on DROP, or when its retries run out) republishes the message
with the original's metadata as headers and names neither (dapr/dapr
pkg/runtime/subscription `sendToDeadLetter`)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Protocol

from taskevents.publisher import CLOUD_EVENT_JSON, LazyDaprClient
from taskevents.settings import ServiceSettings
from taskevents.status import DEAD_LETTER_REASON_HEADER, DEAD_LETTER_SOURCE_HEADER

MAX_REASON_CHARS = 1000


class DeadLetterSink(Protocol):
    async def dead_letter(self, message: bytes, *, key: str | None, reason: str) -> None:
        """Raises when the message could not be published (the caller then answers DROP
        and Dapr dead-letters it without the reason)."""
        ...


class DaprDeadLetters:
    """A DeadLetterSink through the app's sidecar."""

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

    async def dead_letter(self, message: bytes, *, key: str | None, reason: str) -> None:
        metadata = {
            "rawPayload": "true",
            DEAD_LETTER_REASON_HEADER: reason[:MAX_REASON_CHARS],
            DEAD_LETTER_SOURCE_HEADER: self._source,
        }
        if key:
            metadata["partitionKey"] = key
        client = await self._dapr.get()
        async with asyncio.timeout(self._timeout):
            await client.publish_event(
                pubsub_name=self._pubsub_name,
                topic_name=self._topic,
                data=message,
                publish_metadata=metadata,
                data_content_type=CLOUD_EVENT_JSON,
            )

    async def close(self) -> None:
        await self._dapr.close()


def start_dead_letters(
    settings: ServiceSettings, source: str, stack: AsyncExitStack, *, pubsub_name: str | None = None
) -> DaprDeadLetters:
    """The service's dead-letter sink, closed with its lifespan."""
    sink = DaprDeadLetters(
        pubsub_name=pubsub_name or settings.pubsub_name,
        topic=settings.dead_letter_topic,
        source=source,
        http_port=settings.dapr_http_port,
        grpc_port=settings.dapr_grpc_port,
    )
    stack.push_async_callback(sink.close)
    return sink
