from __future__ import annotations

from fastapi import FastAPI

from taskevents.web import service_app
from websocket_service.api.dev import dev_router
from websocket_service.api.page import page_router
from websocket_service.api.stream import stream_router
from websocket_service.api.subscriptions import subscriptions_router
from websocket_service.bootstrap import Bootstrap, Services, bootstrap
from websocket_service.settings import APP_ID, Settings

SUMMARY = "Live task events for each user over WebSockets."


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    app = service_app(APP_ID, SUMMARY, lambda: bootstrap(settings), Services, settings)
    app.include_router(subscriptions_router(settings))
    app.include_router(stream_router(settings))
    if settings.environment == "development":
        app.include_router(dev_router(settings))
    app.include_router(page_router())
    return app
