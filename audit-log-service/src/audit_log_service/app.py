from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from audit_log_service.api.dead_letters import dead_letters_router
from audit_log_service.api.events import events_router
from audit_log_service.api.subscriptions import subscriptions_router
from audit_log_service.bootstrap import Bootstrap, Services, bootstrap
from audit_log_service.ports import StorageUnavailableError
from audit_log_service.settings import APP_ID, Settings
from taskevents.web import lifespan_state, probes_router


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with bootstrap(settings) as services:
            yield lifespan_state(services)

    app = FastAPI(
        title=APP_ID,
        summary="The system of record: every task event once, every dead letter, a query API.",
        version=version(APP_ID),
        lifespan=lifespan,
    )
    app.include_router(probes_router(APP_ID, Services))
    app.include_router(subscriptions_router(settings))
    app.include_router(events_router())
    app.include_router(dead_letters_router())
    app.add_exception_handler(StorageUnavailableError, _database_unavailable)
    return app


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the audit log's database is unavailable: {error}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )
