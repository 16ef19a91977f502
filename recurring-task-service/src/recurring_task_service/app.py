from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from recurring_task_service.api.outbox import outbox_router
from recurring_task_service.api.schedules import schedules_router
from recurring_task_service.api.subscriptions import subscriptions_router
from recurring_task_service.bootstrap import Bootstrap, Services, bootstrap
from recurring_task_service.ports import StoreUnavailableError
from recurring_task_service.settings import APP_ID, Settings
from taskevents.web import service_app

SUMMARY = "Schedules that publish task.recurring.triggered once per occurrence."


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    app = service_app(APP_ID, SUMMARY, lambda: bootstrap(settings), Services, settings)
    app.include_router(subscriptions_router(settings))
    app.include_router(schedules_router())
    app.include_router(outbox_router())

    @app.exception_handler(StoreUnavailableError)
    async def store_unavailable(_request: Request, error: StoreUnavailableError) -> JSONResponse:
        return JSONResponse(
            {"detail": f"the schedule database is unavailable: {error}"}, status_code=503
        )

    return app
