"""The routes daprd delivers task events to (dapr-components/subscriptions/websocket-service.yaml):
one at a time, or in batches (bulk subscribe: one request per batch instead of one per event
keeps the cost per event low at high rates)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.status import Outcome
from taskevents.tracing import within
from taskevents.web import BulkEntry, DeadLettersDep, app_token, deliver_bulk, deliver_event
from websocket_service.bootstrap import FanoutDep
from websocket_service.handlers import push_event_to_clients
from websocket_service.settings import Settings

TASK_EVENTS_ROUTE = "/events/task-events"
TASK_EVENTS_BULK_ROUTE = "/events/task-events/bulk"


def subscriptions_router(settings: Settings) -> APIRouter:
    router = APIRouter(include_in_schema=False, dependencies=[app_token(settings.app_api_token)])

    @router.post(TASK_EVENTS_ROUTE)
    async def task_event(
        request: Request, fanout: FanoutDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(event: TaskEvent, envelope: CloudEvent) -> Outcome:
            return await push_event_to_clients(event, fanout=fanout)

        return await deliver_event(request, handle, dead_letters=dead_letters)

    @router.post(TASK_EVENTS_BULK_ROUTE)
    async def task_events(
        request: Request, fanout: FanoutDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
            outcomes = []
            for entry in entries:
                with within(entry.trace):  # the fan-out span in the entry's own trace
                    outcomes.append(await push_event_to_clients(entry.event, fanout=fanout))
            return outcomes

        return await deliver_bulk(request, handle, dead_letters=dead_letters)

    return router
