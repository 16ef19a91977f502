"""Publishing a dead letter's event to task-events again, through the service's sidecar."""

from __future__ import annotations

from taskevents.events import TaskEvent
from taskevents.publisher import EventPublisher


class DaprRepublisher:
    """EventRepublisher over the shared EventPublisher: the event id stays the CloudEvent
    id and the task id stays the partition key, so the replayed event is the same event;
    a replay for one app says so in the CloudEvent (`replayfor`)."""

    def __init__(
        self, *, pubsub_name: str, topic: str, http_port: int, grpc_port: int, source: str
    ) -> None:
        self._publisher = EventPublisher(
            pubsub_name=pubsub_name,
            topic=topic,
            http_port=http_port,
            grpc_port=grpc_port,
            source=source,
        )

    async def republish(
        self, event: TaskEvent, *, cause: str | None = None, replay_for: str | None = None
    ) -> None:
        await self._publisher.publish(event, cause=cause, replay_for=replay_for)

    async def close(self) -> None:
        await self._publisher.close()
