from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from notification_service.api.notifications import notifications_router
from notification_service.api.preferences import preferences_router
from notification_service.api.subscriptions import subscriptions_router
from notification_service.bootstrap import Bootstrap, Services, bootstrap
from notification_service.settings import APP_ID, Settings
from taskevents.web import lifespan_state, probes_router


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with bootstrap(settings) as services:
            yield lifespan_state(services)

    app = FastAPI(
        title=APP_ID,
        summary="Email and SMS for the task events users care about, per user preferences, "
        "never twice for one event and channel.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.include_router(probes_router(APP_ID, Services))
    app.include_router(subscriptions_router(settings))
    app.include_router(preferences_router())
    app.include_router(notifications_router())
    return app
