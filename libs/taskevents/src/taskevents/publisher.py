"""Publishing task events through the Dapr sidecar."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import httpx
from opentelemetry.trace import SpanKind

from taskevents.cloudevents import REPLAY_FOR_ATTRIBUTE
from taskevents.events import TaskEvent
from taskevents.retry import SIDECAR_STARTING
from taskevents.tracing import event_attributes, grpc_trace_interceptors, link_to, span

if TYPE_CHECKING:
    from dapr.aio.clients import DaprClient

SIDECAR_WAIT_SECONDS = 60.0
JSON = "application/json"
CLOUD_EVENT_JSON = "application/cloudevents+json"


class SidecarUnavailableError(RuntimeError):
    pass


async def wait_for_sidecar(http_port: int, *, timeout: float = SIDECAR_WAIT_SECONDS) -> None:
    """Wait, without blocking the event loop, until the sidecar's outbound side is ready."""
    url = f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound"
    async with httpx.AsyncClient(timeout=2.0) as http:

        async def ready() -> bool:
            try:
                return (await http.get(url)).is_success
            except httpx.HTTPError:
                return False

        if not await SIDECAR_STARTING.within(timeout).poll(ready, until=bool):
            raise SidecarUnavailableError(
                f"the Dapr sidecar at {url} did not become ready in {timeout:.0f}s"
            )


class LazyDaprClient:
    """The async Dapr client, made on first use once the sidecar answers: its constructor
    blocks until the sidecar is healthy, and the sidecar in turn waits for the app to
    listen, so an app must not make it while starting."""

    def __init__(self, *, http_port: int, grpc_port: int) -> None:
        self._http_port = http_port
        self._grpc_port = grpc_port
        self._client: DaprClient | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> DaprClient:
        async with self._lock:
            if self._client is None:
                await wait_for_sidecar(self._http_port)
                from dapr.aio.clients import DaprClient

                # The current trace goes to daprd as `traceparent` metadata.
                self._client = DaprClient(
                    address=f"127.0.0.1:{self._grpc_port}", interceptors=grpc_trace_interceptors()
                )
            return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None


class EventPublisher:
    """Publishes events with a JSON content type (so subscribers get `data` as an object),
    the event id as the CloudEvent id and the task id as the Kafka partition key."""

    def __init__(
        self,
        *,
        pubsub_name: str,
        topic: str,
        http_port: int,
        grpc_port: int,
        source: str = "taskevents",
    ) -> None:
        self.pubsub_name = pubsub_name
        self.topic = topic
        self.source = source  # the CloudEvent source of an envelope we make ourselves
        self._dapr = LazyDaprClient(http_port=http_port, grpc_port=grpc_port)

    async def publish(
        self,
        event: TaskEvent,
        *,
        topic: str | None = None,
        cause: str | None = None,
        replay_for: str | None = None,
    ) -> None:
        """Publish in a PRODUCER span of the current trace; `cause`, the `traceparent` of
        what this publish follows from in another trace (a replayed event's first publish),
        becomes a link. `replay_for`: the app a replayed dead letter is for, carried as the
        CloudEvent's `replayfor` extension (so the envelope is ours, not daprd's: daprd
        keeps the attributes of a CloudEvent it is given and adds the trace, topic and
        pubsubname)."""
        destination = topic or self.topic
        with span(
            f"publish {destination}",
            kind=SpanKind.PRODUCER,
            attributes={
                **event_attributes(event.event_id, event.type, event.task_id),
                "messaging.system": "dapr",
                "messaging.destination.name": destination,
            },
            links=link_to(cause),
        ):
            if replay_for is None:
                await self.publish_raw(
                    event.to_json().encode(),
                    key=event.task_id,
                    cloudevent_id=event.event_id,
                    topic=topic,
                )
                return
            envelope = {
                "specversion": "1.0",
                "id": event.event_id,
                "source": self.source,
                "type": "com.dapr.event.sent",
                "datacontenttype": JSON,
                "data": json.loads(event.to_json()),
                REPLAY_FOR_ATTRIBUTE: replay_for,
            }
            await self.publish_raw(
                json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode(),
                key=event.task_id,
                content_type=CLOUD_EVENT_JSON,
                topic=topic,
            )

    async def publish_raw(
        self,
        data: bytes,
        *,
        key: str | None,
        cloudevent_id: str | None = None,
        content_type: str = JSON,
        topic: str | None = None,
    ) -> None:
        metadata = {}
        if key:
            metadata["partitionKey"] = key
        if cloudevent_id:
            metadata["cloudevent.id"] = cloudevent_id
        client = await self._dapr.get()
        await client.publish_event(
            pubsub_name=self.pubsub_name,
            topic_name=topic or self.topic,
            data=data,
            publish_metadata=metadata,
            data_content_type=content_type,
        )

    async def connect(self) -> None:
        """Make the Dapr client now (once the sidecar answers), so the first publish does
        not pay for importing and connecting it."""
        await self._dapr.get()

    async def close(self) -> None:
        await self._dapr.close()
