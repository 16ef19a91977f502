"""The routes daprd delivers to: task events into the audit log, dead letters into theirs."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

from audit_log_service.handlers import (
    dead_letter_of_message,
    delivery_of,
    raw_payload_of,
    record_dead_letter,
    record_event,
    record_events,
)
from audit_log_service.ports import AuditLog
from audit_log_service.settings import Settings
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.metrics import DELIVERIES
from taskevents.status import Outcome
from taskevents.web import (
    NOT_METADATA,
    BulkEntry,
    app_token_guard,
    bulk_subscription_route,
    delivery_metadata,
    subscription_route,
)

TASK_EVENTS_ROUTE = "/events/task-events"
# The route of the bulk subscription (dapr-components/subscriptions/audit-log-service.yaml);
# the one-by-one route stays for a subscription with bulk delivery turned off.
TASK_EVENTS_BULK_ROUTE = "/events/task-events/bulk"
DEAD_LETTERS_ROUTE = "/events/task-events-dlq"


def add_subscription_routes(app: FastAPI, *, audit_log: AuditLog, settings: Settings) -> None:
    async def on_task_event(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        delivery = delivery_of(envelope, delivery_metadata())
        return await record_event(event, delivery=delivery, log=audit_log)

    async def on_task_events(entries: Sequence[BulkEntry]) -> list[Outcome]:
        batch = [(entry.event, delivery_of(entry.envelope, entry.metadata)) for entry in entries]
        return await record_events(batch, log=audit_log)

    async def on_dead_letter(request: Request) -> JSONResponse:
        # The dead-letter subscription takes messages raw (rawPayload): daprd would never
        # pass on one that is not a CloudEvent, and with no dead-letter topic of its own to
        # move it to, it would retry it forever and block the partition.
        body = await request.body()
        metadata = {k: v for k, v in request.headers.items() if k not in NOT_METADATA}
        letter = dead_letter_of_message(
            raw_payload_of(body), topic=settings.dead_letter_topic, metadata=metadata
        )
        outcome = await record_dead_letter(letter, log=audit_log)
        DELIVERIES.labels(DEAD_LETTERS_ROUTE, letter.type or "unparsed", outcome.status.value).inc()
        return JSONResponse(outcome.response())

    token = settings.app_api_token
    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=token)
    bulk_subscription_route(app, TASK_EVENTS_BULK_ROUTE, on_task_events, token=token)
    app.add_api_route(
        DEAD_LETTERS_ROUTE,
        on_dead_letter,
        methods=["POST"],
        include_in_schema=False,
        dependencies=[Depends(app_token_guard(token))],
    )
