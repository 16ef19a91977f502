from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from taskevents.web import probes_router, sidecar_check, subscription_route
from websocket_service.adapters.jwt_tokens import JwtTokens
from websocket_service.api.dev import dev_router
from websocket_service.api.page import page_router
from websocket_service.api.stream import stream_router
from websocket_service.handlers import push_event_to_clients
from websocket_service.hub import Close, CloseCode, Hub
from websocket_service.settings import APP_ID, Settings

log = get_logger(__name__)

TASK_EVENTS_ROUTE = "/events/task-events"
GOING_AWAY = Close(CloseCode.GOING_AWAY, "server shutting down; reconnect")


def hub_of(app: FastAPI) -> Hub:
    hub: Hub = app.state.hub
    return hub


async def close_all_clients(hub: Hub, *, grace_seconds: float) -> None:
    """Send every client a going-away close and wait (bounded) until they are gone."""
    hub.close_all(GOING_AWAY)
    try:
        async with asyncio.timeout(grace_seconds):
            await hub.wait_until_empty()
    except TimeoutError:
        log.warning("clients still connected at shutdown", connections=hub.connection_count)


def create_app(settings: Settings) -> FastAPI:
    # The hub is plain memory, no I/O: it exists with the app, so that the server can
    # close its clients (1001) before uvicorn drops the connections at shutdown.
    hub = Hub(
        max_queue_frames=settings.max_queue_frames,
        recent_event_ids=settings.recent_event_ids,
    )
    tokens = JwtTokens(settings.jwt_secret, leeway_seconds=settings.jwt_leeway_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await close_all_clients(hub, grace_seconds=settings.shutdown_grace_seconds)

    app = FastAPI(
        title=APP_ID,
        summary="Live task events for each user over WebSockets.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.hub = hub

    async def on_task_event(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        return await push_event_to_clients(event, fanout=hub)

    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=settings.app_api_token)
    app.include_router(
        probes_router(
            APP_ID,
            {"sidecar": sidecar_check(settings.dapr_http_port)},
            health_extra=lambda: {"connections": hub.connection_count},
        )
    )
    app.include_router(stream_router(hub, tokens, close_grace_seconds=settings.close_grace_seconds))
    if settings.environment == "development":
        app.include_router(dev_router(tokens, ttl_seconds=settings.dev_token_ttl_seconds))
    app.include_router(page_router())
    return app
