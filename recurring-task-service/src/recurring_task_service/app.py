from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recurring_task_service.adapters.migrations import migrate
from recurring_task_service.adapters.postgres import PostgresSchedules, connect
from recurring_task_service.adapters.timer import FiringTimer
from recurring_task_service.api.schedules import router as schedules_router
from recurring_task_service.handlers import sync_task_schedule
from recurring_task_service.ports import StoreUnavailableError
from recurring_task_service.settings import APP_ID, Settings
from recurring_task_service.state import AppState, resources
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.publisher import EventPublisher
from taskevents.status import Outcome
from taskevents.web import (
    BulkEntry,
    ReadinessCheck,
    bulk_subscription_route,
    static_probes_router,
    sidecar_check,
    subscription_route,
)

DATABASE_CHECK_SECONDS = 2.0
TASK_EVENTS_ROUTE = "/events/task-events"
# The subscription's route (dapr-components/subscriptions/recurring-task-service.yaml):
# batches, because every triggered event this service publishes comes back to it too.
TASK_EVENTS_BULK_ROUTE = "/events/task-events/bulk"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await connect(
            str(settings.database_url),
            size=settings.database_pool_size,
            wait_seconds=settings.database_wait_seconds,
        )
        try:
            async with pool.acquire() as connection:
                await migrate(connection, settings.migrations_dir)
            schedules = PostgresSchedules(pool)
            publisher = EventPublisher(
                pubsub_name=settings.pubsub_name,
                topic=settings.topic,
                http_port=settings.dapr_http_port,
                grpc_port=settings.dapr_grpc_port,
            )
            timer = FiringTimer(
                schedules,
                schedules,
                publisher,
                topic=settings.topic,
                poll_seconds=settings.poll_seconds,
                batch_size=settings.claim_batch_size,
                grace=timedelta(seconds=settings.catch_up_grace_seconds),
                sidecar_ready=sidecar_check(settings.dapr_http_port),
            )
            try:
                timer.start()
                app.state.resources = AppState(
                    schedules=schedules,
                    task_schedules=schedules,
                    waker=timer,
                    database_check=_database_check(pool),
                )
                yield
            finally:
                del app.state.resources
                await timer.stop()
                await publisher.close()
        finally:
            await pool.close()

    app = FastAPI(
        title=APP_ID,
        summary="Schedules that publish task.recurring.triggered once per occurrence.",
        lifespan=lifespan,
    )

    async def database_ready() -> str | None:
        if not hasattr(app.state, "resources"):
            return "not started"
        return await resources(app.state).database_check()

    async def on_task_event(event: TaskEvent, _envelope: CloudEvent) -> Outcome:
        return await sync_task_schedule(event, schedules=resources(app.state).task_schedules)

    app.include_router(
        static_probes_router(
            APP_ID,
            {"database": database_ready, "sidecar": sidecar_check(settings.dapr_http_port)},
        )
    )
    app.include_router(schedules_router)

    async def on_task_events(entries: Sequence[BulkEntry]) -> list[Outcome]:
        # In order: the entries of one batch come from one partition, so one task's events
        # are applied as they were published. Most are this service's own triggered
        # events, which need no database.
        task_schedules = resources(app.state).task_schedules
        return [await sync_task_schedule(e.event, schedules=task_schedules) for e in entries]

    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=settings.app_api_token)
    bulk_subscription_route(
        app, TASK_EVENTS_BULK_ROUTE, on_task_events, token=settings.app_api_token
    )

    @app.exception_handler(StoreUnavailableError)
    async def store_unavailable(_request: Request, error: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the schedule database is unavailable: {error}"}, status_code=503
        )

    return app


def _database_check(pool: asyncpg.Pool) -> ReadinessCheck:
    async def check() -> str | None:
        async with pool.acquire(timeout=DATABASE_CHECK_SECONDS) as connection:
            await connection.fetchval("SELECT 1", timeout=DATABASE_CHECK_SECONDS)
        return None

    return check
