from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from audit_log_service.api.dead_letters import dead_letters_router
from audit_log_service.api.events import events_router
from audit_log_service.api.subscriptions import subscriptions_router
from audit_log_service.bootstrap import Bootstrap, Services, bootstrap
from audit_log_service.ports import StorageUnavailableError
from audit_log_service.settings import APP_ID, Settings
from taskevents.web import service_app

SUMMARY = "The system of record: every task event once, every dead letter, a query API."


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    app = service_app(APP_ID, SUMMARY, lambda: bootstrap(settings), Services, settings)
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
