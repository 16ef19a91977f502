"""The sidecar's routes (dapr-components/subscriptions/recurring-task-service.yaml)."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from recurring_task_service.bootstrap import TaskSchedulesDep
from recurring_task_service.handlers import sync_task_schedule
from recurring_task_service.ports import TaskSchedules
from recurring_task_service.settings import Settings
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from taskevents.tracing import current_traceparent, within
from taskevents.web import BulkEntry, DeadLettersDep, app_token, deliver_bulk, deliver_event

log = get_logger(__name__)

TASK_EVENTS_ROUTE = "/events/task-events"
# The subscription's route: batches, because every triggered event this service publishes
# comes back to it too.
TASK_EVENTS_BULK_ROUTE = "/events/task-events/bulk"


def subscriptions_router(settings: Settings) -> APIRouter:
    router = APIRouter(dependencies=[app_token(settings.app_api_token)], include_in_schema=False)

    @router.post(TASK_EVENTS_ROUTE)
    async def task_event(
        request: Request, schedules: TaskSchedulesDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(event: TaskEvent, _envelope: CloudEvent) -> Outcome:
            # Within the delivery's handling span: the schedule's cause.
            return await sync_task_schedule(event, schedules=schedules, cause=current_traceparent())

        return await deliver_event(request, handle, dead_letters=dead_letters)

    @router.post(TASK_EVENTS_BULK_ROUTE)
    async def task_events(
        request: Request, schedules: TaskSchedulesDep, dead_letters: DeadLettersDep
    ) -> JSONResponse:
        async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
            # In order: the entries of one batch come from one partition, so one task's
            # events are applied as they were published. Most are this service's own
            # triggered events, which need no database. Each entry answers for itself: a
            # bug met by one event is retried (then dead-lettered) alone, not with its batch.
            outcomes = []
            for entry in entries:
                with within(entry.trace):  # its database spans in the entry's own trace
                    outcomes.append(await _one(entry.event, schedules))
            return outcomes

        return await deliver_bulk(request, handle, dead_letters=dead_letters)

    return router


async def _one(event: TaskEvent, schedules: TaskSchedules) -> Outcome:
    try:
        # Within the entry's handling span: the schedule's cause.
        return await sync_task_schedule(event, schedules=schedules, cause=current_traceparent())
    except Exception as error:
        log.exception("bulk entry failed; asking Dapr to retry it", event_id=event.event_id)
        return Outcome.retry(f"{type(error).__name__}: {error}")
