from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from taskevents.web import lifespan_state, probes_router
from websocket_service.api.dev import dev_router
from websocket_service.api.page import page_router
from websocket_service.api.stream import stream_router
from websocket_service.api.subscriptions import subscriptions_router
from websocket_service.bootstrap import Bootstrap, Services, bootstrap
from websocket_service.settings import APP_ID, Settings


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with bootstrap(settings) as services:
            yield lifespan_state(services)

    app = FastAPI(
        title=APP_ID,
        summary="Live task events for each user over WebSockets.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(probes_router(APP_ID, Services))
    app.include_router(subscriptions_router(settings))
    app.include_router(stream_router(settings))
    if settings.environment == "development":
        app.include_router(dev_router(settings))
    app.include_router(page_router())
    return app
