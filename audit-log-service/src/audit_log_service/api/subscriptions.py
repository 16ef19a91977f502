"""The routes daprd delivers to: task events into the audit log, dead letters into theirs."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from audit_log_service.bootstrap import AuditLogDep
from audit_log_service.handlers import (
    delivery_of,
    file_dead_letter,
    record_event,
    record_events,
)
from audit_log_service.settings import Settings
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.status import Outcome
from taskevents.web import (
    BulkEntry,
    DeadLettersDep,
    app_token,
    deliver_bulk,
    deliver_event,
    delivery_metadata,
)

TASK_EVENTS_ROUTE = "/events/task-events"
# The route of the bulk subscription (dapr-components/subscriptions/audit-log-service.yaml);
# the one-by-one route stays for a subscription with bulk delivery turned off.
TASK_EVENTS_BULK_ROUTE = "/events/task-events/bulk"
DEAD_LETTERS_ROUTE = "/events/task-events-dlq"


def subscriptions_router(settings: Settings) -> APIRouter:
    router = APIRouter(dependencies=[app_token(settings.app_api_token)], include_in_schema=False)

    @router.post(TASK_EVENTS_ROUTE)
    async def task_event(
        request: Request, audit_log: AuditLogDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(event: TaskEvent, envelope: CloudEvent) -> Outcome:
            delivery = delivery_of(envelope, delivery_metadata())
            return await record_event(event, delivery=delivery, audit_log=audit_log)

        return await deliver_event(request, handle, dead_letters=dead_letters)

    @router.post(TASK_EVENTS_BULK_ROUTE)
    async def task_events(
        request: Request, audit_log: AuditLogDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
            batch = [(e.event, delivery_of(e.envelope, e.metadata)) for e in entries]
            return await record_events(batch, audit_log=audit_log)

        return await deliver_bulk(request, handle, dead_letters=dead_letters)

    @router.post(DEAD_LETTERS_ROUTE)
    async def dead_letter(request: Request, audit_log: AuditLogDep) -> JSONResponse:
        # The dead-letter subscription takes messages raw (rawPayload): daprd would never
        # pass on one that is not a CloudEvent, and with no dead-letter topic of its own to
        # move it to, it would retry it forever and block the partition. So every message
        # is filed from its bytes as they were on the topic, whether or not the edge could
        # read an event in them.
        async def file(*_: object) -> Outcome:
            return await file_dead_letter(
                await request.body(),
                topic=settings.dead_letter_topic,
                metadata=delivery_metadata(),
                audit_log=audit_log,
            )

        return await deliver_event(request, file, on_invalid=file)

    return router
