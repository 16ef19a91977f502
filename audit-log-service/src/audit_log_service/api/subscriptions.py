"""The routes daprd delivers to: task events into the audit log, dead letters into theirs."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextvars import ContextVar
from types import MappingProxyType

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from audit_log_service.handlers import (
    dead_letter_of_body,
    dead_letter_of_event,
    delivery_of,
    record_dead_letter,
    record_event,
)
from audit_log_service.ports import AuditLog
from audit_log_service.settings import Settings
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from taskevents.web import subscription_route

logger = get_logger(__name__)

TASK_EVENTS_ROUTE = "/events/task-events"
DEAD_LETTERS_ROUTE = "/events/task-events-dlq"

# Headers of every HTTP call, not metadata of the message; the app token is a secret.
NOT_METADATA = frozenset(
    {
        "host",
        "content-type",
        "content-length",
        "accept",
        "accept-encoding",
        "user-agent",
        "connection",
        "dapr-api-token",
        "authorization",
        "traceparent",
        "tracestate",
        "baggage",
    }
)

_delivery_metadata: ContextVar[Mapping[str, str]] = ContextVar(
    "delivery_metadata", default=MappingProxyType({})
)


def delivery_metadata() -> Mapping[str, str]:
    """The metadata of the message being delivered (Kafka __partition, __offset, __key,
    __topic, __timestamp, the message's Kafka headers), empty outside a delivery."""
    return _delivery_metadata.get()


class DeliveryMetadataMiddleware:
    """daprd passes a message's metadata as HTTP headers, and the shared subscription route
    hands handlers only the CloudEvent: this keeps the headers at hand for the delivery."""

    def __init__(self, app: ASGIApp, paths: Collection[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        metadata = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            if name not in NOT_METADATA:
                metadata[name] = raw_value.decode("utf-8", errors="replace")
        logger.debug("delivery metadata", path=scope["path"], metadata=metadata)
        token = _delivery_metadata.set(MappingProxyType(metadata))
        try:
            await self.app(scope, receive, send)
        finally:
            _delivery_metadata.reset(token)


def add_subscription_routes(app: FastAPI, *, audit_log: AuditLog, settings: Settings) -> None:
    async def on_task_event(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        delivery = delivery_of(envelope, delivery_metadata())
        return await record_event(event, delivery=delivery, log=audit_log)

    async def on_dead_letter(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        letter = dead_letter_of_event(
            event, envelope, topic=settings.dead_letter_topic, metadata=delivery_metadata()
        )
        return await record_dead_letter(letter, log=audit_log)

    async def on_unreadable_dead_letter(
        body: bytes, envelope: CloudEvent | None, reason: str
    ) -> Outcome:
        letter = dead_letter_of_body(
            body, envelope, reason, topic=settings.dead_letter_topic, metadata=delivery_metadata()
        )
        return await record_dead_letter(letter, log=audit_log)

    token = settings.app_api_token
    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=token)
    subscription_route(
        app, DEAD_LETTERS_ROUTE, on_dead_letter, token=token, on_invalid=on_unreadable_dead_letter
    )
    app.add_middleware(DeliveryMetadataMiddleware, paths=(TASK_EVENTS_ROUTE, DEAD_LETTERS_ROUTE))
