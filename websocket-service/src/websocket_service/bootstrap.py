"""The service's wiring: the hub, the token keys and the audit log client, built in one
place and closed in reverse order; and the dependencies the routes and the socket take
from them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from starlette.requests import HTTPConnection

from taskevents.auth import TokenVerifier, start_verifier
from taskevents.dead_letters import DeadLetterSink, start_dead_letters
from taskevents.logging import get_logger
from taskevents.web import ReadinessCheck, RunningServices, services_of, sidecar_check
from websocket_service.adapters.audit_log import DaprAuditLog
from websocket_service.hub import Close, CloseCode, Hub
from websocket_service.ports import AuditLog, Fanout
from websocket_service.settings import APP_ID, Settings

log = get_logger(__name__)

GOING_AWAY = Close(CloseCode.GOING_AWAY, "server shutting down; reconnect")


@dataclass(frozen=True, slots=True)
class Services(RunningServices):
    hub: Hub
    tokens: TokenVerifier
    audit_log: AuditLog
    sidecar: ReadinessCheck
    shutdown_grace_seconds: float
    dead_letters: DeadLetterSink | None = None

    def dead_letter_sink(self) -> DeadLetterSink | None:
        return self.dead_letters

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        return {"sidecar": self.sidecar, "token_key": self._token_key}

    def health_details(self) -> Mapping[str, Any]:
        return {"connections": self.hub.connection_count}

    def token_verifier(self) -> TokenVerifier:
        return self.tokens

    async def _token_key(self) -> str | None:
        return None if self.tokens.ready else "token key not loaded from the secret store yet"

    async def close_all_clients(self) -> None:
        """Send every client a going-away close and wait (bounded) until they are gone."""
        self.hub.close_all(GOING_AWAY)
        try:
            async with asyncio.timeout(self.shutdown_grace_seconds):
                await self.hub.wait_until_empty()
        except TimeoutError:
            log.warning(
                "clients still connected at shutdown", connections=self.hub.connection_count
            )


Bootstrap = Callable[[Settings], AbstractAsyncContextManager[Services]]


@asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Services]:
    api_token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
    async with contextlib.AsyncExitStack() as stack:
        audit_log = DaprAuditLog(
            dapr_http_port=settings.dapr_http_port,
            app_id=settings.audit_app_id,
            timeout_seconds=settings.resume_timeout_seconds,
            dapr_api_token=api_token,
        )
        stack.push_async_callback(audit_log.close)
        tokens = start_verifier(settings, stack)
        services = Services(
            hub=Hub(
                max_queue_frames=settings.max_queue_frames,
                recent_event_ids=settings.recent_event_ids,
                replay_buffer_events=settings.replay_buffer_events,
            ),
            tokens=tokens,
            audit_log=audit_log,
            sidecar=sidecar_check(settings.dapr_http_port),
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
            # Through the component it subscribes with: the one its scopes let it publish
            # dead letters to.
            dead_letters=start_dead_letters(
                settings, APP_ID, stack, pubsub_name=settings.dead_letter_pubsub_name
            ),
        )
        stack.push_async_callback(services.close_all_clients)
        yield services


def _services(connection: HTTPConnection) -> Services:
    return services_of(connection, Services)


def _hub(connection: HTTPConnection) -> Hub:
    return _services(connection).hub


def _tokens(connection: HTTPConnection) -> TokenVerifier:
    return _services(connection).tokens


def _audit_log(connection: HTTPConnection) -> AuditLog:
    return _services(connection).audit_log


HubDep = Annotated[Hub, Depends(_hub)]
FanoutDep = Annotated[Fanout, Depends(_hub)]
TokenVerifierDep = Annotated[TokenVerifier, Depends(_tokens)]
AuditLogDep = Annotated[AuditLog, Depends(_audit_log)]
