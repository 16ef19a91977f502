"""The sidecar's routes: each delivered task event goes to the handler, and its outcome is
the answer to Dapr. The path is the one dapr-components/subscriptions names."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from notification_service.bootstrap import PolicyDep, PortsDep
from notification_service.handlers import notify_user_or_dead_letter
from notification_service.settings import Settings
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.status import Outcome
from taskevents.web import DeadLettersDep, app_token, deliver_event, delivery_metadata

TASK_EVENTS_ROUTE = "/events/task-events"


def subscriptions_router(settings: Settings) -> APIRouter:
    router = APIRouter(dependencies=[app_token(settings.app_api_token)], include_in_schema=False)

    @router.post(TASK_EVENTS_ROUTE)
    async def task_events(
        request: Request, ports: PortsDep, policy: PolicyDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(event: TaskEvent, envelope: CloudEvent) -> Outcome:
            cloud_event = envelope.model_dump(mode="json", exclude_unset=True)
            return await notify_user_or_dead_letter(
                event,
                cloud_event,
                ports=ports,
                policy=policy,
                published_at=record_timestamp(delivery_metadata()),
            )

        # The handler dead-letters its own drops with their reasons; the edge does so for
        # a message it cannot read.
        return await deliver_event(request, handle, dead_letters=dead_letters)

    return router


def record_timestamp(metadata: Mapping[str, str]) -> datetime | None:
    """When the message was appended to the topic: daprd passes Kafka's record timestamp as
    the `__timestamp` metadata (milliseconds since the epoch, or RFC 3339)."""
    value = (metadata.get("__timestamp") or "").strip()
    if not value:
        return None
    try:
        if value.lstrip("-").isdigit():
            number = int(value)
            return datetime.fromtimestamp(number / 1000 if number > 10**11 else number, UTC)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
