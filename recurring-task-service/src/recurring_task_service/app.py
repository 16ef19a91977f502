from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recurring_task_service.api.schedules import schedules_router
from recurring_task_service.api.subscriptions import subscriptions_router
from recurring_task_service.bootstrap import Bootstrap, Services, bootstrap
from recurring_task_service.ports import StoreUnavailableError
from recurring_task_service.settings import APP_ID, Settings
from taskevents.web import lifespan_state, probes_router


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with bootstrap(settings) as services:
            yield lifespan_state(services)

    app = FastAPI(
        title=APP_ID,
        summary="Schedules that publish task.recurring.triggered once per occurrence.",
        version=version(APP_ID),
        lifespan=lifespan,
    )
    app.include_router(probes_router(APP_ID, Services))
    app.include_router(subscriptions_router(settings))
    app.include_router(schedules_router())

    @app.exception_handler(StoreUnavailableError)
    async def store_unavailable(_request: Request, error: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the schedule database is unavailable: {error}"}, status_code=503
        )

    return app
