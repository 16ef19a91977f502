from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from taskevents.web import (
    BulkEntry,
    ReadinessCheck,
    bulk_subscription_route,
    static_probes_router,
    sidecar_check,
    subscription_route,
)
from websocket_service.adapters.audit_log import DaprAuditLog
from websocket_service.adapters.dapr_secrets import SecretUnavailableError, read_secret
from websocket_service.adapters.jwt_tokens import JwtTokens
from websocket_service.api.dev import dev_router
from websocket_service.api.page import page_router
from websocket_service.api.stream import StreamOptions, stream_router
from websocket_service.handlers import push_event_to_clients
from websocket_service.hub import Close, CloseCode, Hub
from websocket_service.ports import AuditLog
from websocket_service.settings import APP_ID, Settings

log = get_logger(__name__)

TASK_EVENTS_ROUTE = "/events/task-events"
# The bulk subscription's route (dapr-components/subscriptions/websocket-service.yaml): one
# request per batch instead of one per event keeps the cost per event low at high rates.
TASK_EVENTS_BULK_ROUTE = "/events/task-events/bulk"
GOING_AWAY = Close(CloseCode.GOING_AWAY, "server shutting down; reconnect")
SECRET_RETRY_SECONDS = 1.0


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


async def load_secret_from_store(settings: Settings, tokens: JwtTokens) -> None:
    """Retry until the sidecar hands out the token key; until then tokens are refused with
    1013 (try again later)."""
    assert settings.jwt_secret_store is not None
    api_token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    while True:
        try:
            secret = await read_secret(
                dapr_http_port=settings.dapr_http_port,
                store=settings.jwt_secret_store,
                name=settings.jwt_secret_name,
                dapr_api_token=api_token,
            )
        except SecretUnavailableError as error:
            log.info("token key not loaded yet; retrying", reason=str(error))
            await asyncio.sleep(SECRET_RETRY_SECONDS)
            continue
        tokens.use_secret(secret)
        log.info("token key loaded", store=settings.jwt_secret_store, name=settings.jwt_secret_name)
        return


def create_app(settings: Settings, *, audit: AuditLog | None = None) -> FastAPI:
    # The hub is plain memory, no I/O: it exists with the app, so that the server can
    # close its clients (1001) before uvicorn drops the connections at shutdown.
    hub = Hub(
        max_queue_frames=settings.max_queue_frames,
        recent_event_ids=settings.recent_event_ids,
        replay_buffer_events=settings.replay_buffer_events,
    )
    from_store = settings.jwt_secret_store is not None
    tokens = JwtTokens(
        None if from_store else settings.jwt_secret,
        leeway_seconds=settings.jwt_leeway_seconds,
        jwks_url=settings.jwks_url,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        admin_role=settings.admin_role,
    )
    api_token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    audit_log = audit or DaprAuditLog(
        dapr_http_port=settings.dapr_http_port,
        app_id=settings.audit_app_id,
        timeout_seconds=settings.resume_timeout_seconds,
        dapr_api_token=api_token,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = (
            asyncio.create_task(load_secret_from_store(settings, tokens)) if from_store else None
        )
        try:
            yield
        finally:
            await close_all_clients(hub, grace_seconds=settings.shutdown_grace_seconds)
            if loader is not None:
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            if isinstance(audit_log, DaprAuditLog):
                await audit_log.close()

    app = FastAPI(
        title=APP_ID,
        summary="Live task events for each user over WebSockets.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.hub = hub

    async def on_task_event(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        return await push_event_to_clients(event, fanout=hub)

    async def token_key_check() -> str | None:
        return None if tokens.has_secret else "token key not loaded from the secret store yet"

    checks: dict[str, ReadinessCheck] = {
        "sidecar": sidecar_check(settings.dapr_http_port),
        "token_key": token_key_check,
    }

    async def on_task_events(entries: Sequence[BulkEntry]) -> list[Outcome]:
        return [await push_event_to_clients(entry.event, fanout=hub) for entry in entries]

    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=settings.app_api_token)
    bulk_subscription_route(
        app, TASK_EVENTS_BULK_ROUTE, on_task_events, token=settings.app_api_token
    )
    app.include_router(
        static_probes_router(APP_ID, checks, health_extra=lambda: {"connections": hub.connection_count})
    )
    options = StreamOptions(
        close_grace_seconds=settings.close_grace_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        coalesce_seconds=settings.coalesce_milliseconds / 1000,
        resume_timeout_seconds=settings.resume_timeout_seconds,
        resume_max_events=settings.resume_max_events,
    )
    app.include_router(stream_router(hub, tokens, audit_log, options))
    if settings.environment == "development":
        app.include_router(
            dev_router(
                tokens,
                ttl_seconds=settings.dev_token_ttl_seconds,
                admin_role=settings.admin_role,
            )
        )
    app.include_router(page_router())
    return app
