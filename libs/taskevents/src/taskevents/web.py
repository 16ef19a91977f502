"""FastAPI plumbing every service shares: the probes, /metrics, the app-token check and the
subscription edge that turns a delivered message into SUCCESS / RETRY / DROP."""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from types import MappingProxyType
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from pydantic import SecretStr
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskevents.auth import VERIFIER_KEY, TokenVerifier
from taskevents.cloudevents import CloudEvent, parse_cloud_event
from taskevents.dead_letters import DeadLetterSink
from taskevents.events import InvalidEventError, TaskEvent
from taskevents.logging import configure_logging, get_logger
from taskevents.metrics import (
    DELIVERIES,
    DELIVERY_SECONDS,
    REPLAYS_FOR_OTHER_APPS,
    render_latest,
)
from taskevents.settings import ServiceSettings
from taskevents.status import DaprStatus, Outcome
from taskevents.tracing import (
    EntrySpan,
    bulk_spans,
    configure_tracing,
    delivery_context,
    entry_context,
    event_attributes,
    instrument_app,
    mark_outcome,
    span,
)

log = get_logger(__name__)

# For the text an API takes in a query or path: no control characters. Postgres cannot hold
# a NUL, and no id, type or topic has a reason to carry one (the API fuzzer found them as
# 500s).
WITHOUT_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]+$"

# The delivered message's Kafka key (its partition key), as daprd's Kafka component names it.
KEY_METADATA = "__key"

# Headers of every HTTP call rather than metadata of the message; the app token is secret.
NOT_METADATA = frozenset(
    {
        "host", "content-type", "content-length", "accept", "accept-encoding", "user-agent",
        "connection", "dapr-api-token", "authorization", "traceparent", "tracestate", "baggage",
    }
)  # fmt: skip
_delivery_metadata: ContextVar[Mapping[str, str]] = ContextVar(
    "delivery_metadata", default=MappingProxyType({})
)


def delivery_metadata() -> Mapping[str, str]:
    """The metadata of the message being delivered — daprd passes it as HTTP headers: Kafka's
    __partition, __offset, __key, __topic, __timestamp and the message's own headers.
    Empty outside a delivery."""
    return _delivery_metadata.get()


# Each check returns None when healthy, or what is wrong.
ReadinessCheck = Callable[[], Awaitable[str | None]]
EventHandler = Callable[[TaskEvent, CloudEvent], Awaitable[Outcome]]


def app_token_guard(token: SecretStr | None) -> Callable[[Request], Awaitable[None]]:
    """A dependency that rejects calls without the sidecar's `dapr-api-token` when the app
    token is configured (dapr-ext-fastapi does not check it). Async, because FastAPI runs a
    plain function dependency in its thread pool: a thread hop on every delivery."""

    async def check(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("dapr-api-token", "")
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise HTTPException(status_code=401, detail="missing or wrong dapr-api-token")

    return check


class RunningServices:
    """The base of each service's typed lifespan state (its `Services`, made in its
    `bootstrap.py`): what the probes ask of it."""

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        return {}

    def health_details(self) -> Mapping[str, Any]:
        return {}

    def token_verifier(self) -> TokenVerifier | None:
        """The verifier of the callers' bearer tokens (taskevents.auth), if the service
        has routes for people."""
        return None

    def dead_letter_sink(self) -> DeadLetterSink | None:
        """Where the subscription edge dead-letters what it drops, with the reason and the
        app id (taskevents.dead_letters); None: Dapr does, reasonless."""
        return None


STATE_KEY = "services"
S = TypeVar("S", bound=RunningServices)


def lifespan_state(services: RunningServices) -> dict[str, Any]:
    """What a lifespan yields: Starlette hands it to every request and WebSocket as
    `connection.state.services` (and the token verifier, for taskevents.auth)."""
    state: dict[str, Any] = {STATE_KEY: services}
    verifier = services.token_verifier()
    if verifier is not None:
        state[VERIFIER_KEY] = verifier
    return state


def services_of(connection: HTTPConnection, kind: type[S]) -> S:
    found = getattr(connection.state, STATE_KEY, None)
    if not isinstance(found, kind):
        raise ServiceNotRunningError("the service is not running (its lifespan has not started)")
    return found


class ServiceNotRunningError(RuntimeError):
    pass


def service_app(
    app_id: str,
    summary: str,
    services: Callable[[], AbstractAsyncContextManager[S]],
    kind: type[S],
    settings: ServiceSettings,
) -> FastAPI:
    """Every service's app: a lifespan that enters `services()` (the service's bootstrap)
    and hands what it yields to the routes, the probes, and the input limits. The service
    adds its routers."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with services() as running:
            yield lifespan_state(running)

    app = FastAPI(title=app_id, summary=summary, version=_version(app_id), lifespan=lifespan)
    app.state.max_event_bytes = settings.max_event_bytes
    app.state.app_id = app_id
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.include_router(probes_router(app_id, kind))
    instrument_app(app)
    return app


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "0+unknown"


class BodyTooLargeError(Exception):
    pass


class BodyLimit:
    """413 for a request body over `max_bytes`, by its Content-Length or, without one, as
    it streams in. The routes daprd posts to (/events/…) are exempt: they are guarded by
    the app token and check each event against TASKEVENTS_MAX_EVENT_BYTES instead (a bulk
    batch holds many events)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(SIDECAR_ROUTES_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over {self.max_bytes} bytes (TASKEVENTS_MAX_REQUEST_BYTES)"},
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# The routes daprd posts deliveries to, in every service.
SIDECAR_ROUTES_PREFIX = "/events/"


def probes_router(service: str, kind: type[RunningServices]) -> APIRouter:
    """/health, /ready and /metrics: open to everyone, and carrying no user data."""
    router = APIRouter(tags=["probes"])

    @router.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"service": service, "status": "healthy"}
        with contextlib.suppress(ServiceNotRunningError):
            body.update(services_of(request, kind).health_details())
        return body

    @router.get("/ready", responses={503: {"description": "a dependency does not answer"}})
    async def ready(request: Request) -> JSONResponse:
        try:
            checks = services_of(request, kind).readiness_checks()
        except ServiceNotRunningError as error:
            return JSONResponse(
                {"status": "unready", "failing": {"service": str(error)}}, status_code=503
            )
        return await _readiness(checks)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = render_latest()
        return Response(body, media_type=content_type)

    return router


async def _readiness(checks: Mapping[str, ReadinessCheck]) -> JSONResponse:
    failing = {}
    for name, check in checks.items():
        try:
            problem = await check()
        except Exception as error:  # a readiness probe reports, it never raises
            problem = f"{type(error).__name__}: {error}"
        if problem:
            failing[name] = problem
    if failing:
        return JSONResponse({"status": "unready", "failing": failing}, status_code=503)
    return JSONResponse({"status": "ready"})


def sidecar_check(http_port: int) -> ReadinessCheck:
    import httpx

    url = f"http://127.0.0.1:{http_port}/v1.0/healthz/outbound"

    async def check() -> str | None:
        async with httpx.AsyncClient(timeout=2.0) as http:
            try:
                response = await http.get(url)
            except httpx.HTTPError as error:
                return f"sidecar at {url} does not answer: {error}"
        return None if response.is_success else f"sidecar answered {response.status_code}"

    return check


async def _dead_letter_sink(connection: HTTPConnection) -> DeadLetterSink | None:
    return services_of(connection, RunningServices).dead_letter_sink()


# What a subscription route takes to hand the edge its dead-letter sink.
DeadLettersDep = Annotated[DeadLetterSink | None, Depends(_dead_letter_sink)]


def app_token(token: SecretStr | None) -> Any:
    """The dependency that guards every route daprd calls (subscriptions)."""
    return Depends(app_token_guard(token))


async def deliver_event(
    request: Request,
    handler: EventHandler,
    *,
    on_invalid: Callable[[bytes, CloudEvent | None, str], Awaitable[Outcome]] | None = None,
    dead_letters: DeadLetterSink | None = None,
) -> JSONResponse:
    """The edge of one delivered message: parse the CloudEvent, call the handler, answer
    with the handler's outcome. A replayed dead letter of another app is acknowledged
    unhandled (SUCCESS). An event that cannot be parsed is dropped unless `on_invalid` says
    otherwise; an unexpected exception is a RETRY. A drop goes to
    `dead_letters` with its reason (then SUCCESS), else Dapr dead-letters it, reasonless."""
    path = request.url.path
    started = time.perf_counter()
    body = await request.body()
    metadata = {k: v for k, v in request.headers.items() if k not in NOT_METADATA}
    metadata_token = _delivery_metadata.set(MappingProxyType(metadata))
    envelope: CloudEvent | None = None
    event_type = "unparsed"
    event: TaskEvent | None = None
    other_app: str | None = None
    try:
        limit = _max_event_bytes(request)
        if len(body) > limit:
            raise InvalidEventError(_too_large(len(body), limit))
        envelope = parse_cloud_event(body)
        other_app = replay_for_another_app(envelope, request)
        if other_app is None:
            event = envelope.task_event()
    except InvalidEventError as error:
        outcome = (
            await on_invalid(body, envelope, str(error))
            if on_invalid is not None
            else Outcome.drop(str(error))
        )
    if other_app is not None:
        event_type = "replay"
        outcome = _not_ours(path, other_app)
    elif event is not None and envelope is not None:
        event_type = type_label(event)
        structlog.contextvars.bind_contextvars(
            event_id=event.event_id, task_id=event.task_id, trace_id=envelope.trace_id
        )
        # The server span (FastAPI's instrumentation) continues daprd's `traceparent`
        # header; without one, the CloudEvent's own.
        with span(
            f"handle {event_type}",
            kind=SpanKind.CONSUMER,
            attributes=event_attributes(event.event_id, event.type, event.task_id),
            context=delivery_context(envelope.traceparent, envelope.tracestate),
        ) as handling:
            try:
                outcome = await handler(event, envelope)
            except Exception as error:
                log.exception("handler failed; asking Dapr to retry")
                outcome = Outcome.retry(f"{type(error).__name__}: {error}")
            mark_outcome(handling, outcome.status.value, outcome.reason)
    DELIVERIES.labels(path, event_type, outcome.status.value).inc()
    if dead_letters is not None:
        outcome = await dead_letter_with_reason(
            dead_letters, outcome, body, key=metadata.get(KEY_METADATA)
        )
    DELIVERY_SECONDS.labels(path).observe(time.perf_counter() - started)
    if outcome.reason:
        log.info("delivery handled", status=outcome.status.value, reason=outcome.reason)
    structlog.contextvars.unbind_contextvars("event_id", "task_id", "trace_id")
    _delivery_metadata.reset(metadata_token)
    return JSONResponse(outcome.response())


def replay_for_another_app(envelope: CloudEvent, request: Request) -> str | None:
    """The app a replayed dead letter is addressed to, when that is not this app: the audit
    log keeps one dead letter per message and app, and its replay is for that app only —
    the others had the message already (a second WebSocket frame, a second mail)."""
    target = envelope.replay_for
    own: str | None = getattr(request.app.state, "app_id", None)
    return target if target is not None and target != own else None


def _not_ours(path: str, app: str) -> Outcome:
    REPLAYS_FOR_OTHER_APPS.labels(path, app).inc()
    log.info("a replay for another app: acknowledged, not handled", replay_for=app)
    return Outcome.success(f"a replay for {app}: not handled here")


@dataclass(frozen=True, slots=True)
class BulkEntry:
    """One readable event of a bulk delivery, with the metadata daprd sent for it
    (__partition, __offset, …)."""

    entry_id: str
    event: TaskEvent
    envelope: CloudEvent
    metadata: Mapping[str, str]
    # The entry's handling span, for a handler that works entry by entry (tracing.within).
    trace: Context | None = None


# Returns one outcome per entry, in order; the handler owns the batch's round trip.
BulkEventHandler = Callable[[Sequence[BulkEntry]], Awaitable[Sequence[Outcome]]]


async def dead_letter_with_reason(
    sink: DeadLetterSink, outcome: Outcome, message: bytes, *, key: str | None
) -> Outcome:
    """A DROP becomes a dead letter that says why and who, published by the app, then
    SUCCESS. When that publish fails the DROP stands and Dapr dead-letters it (reasonless)."""
    if outcome.status is not DaprStatus.DROP:
        return outcome
    reason = outcome.reason or "dropped"
    try:
        await sink.dead_letter(message, key=key, reason=reason)
    except Exception as error:
        log.warning("could not dead-letter with the reason; Dapr will", error=str(error))
        return outcome
    log.warning("dead-lettered", reason=reason, key=key)
    return Outcome.success(f"dead-lettered: {reason}")


async def deliver_bulk(
    request: Request, handler: BulkEventHandler, *, dead_letters: DeadLetterSink | None = None
) -> JSONResponse:
    """The edge of a bulk delivery (a subscription with `bulkSubscribe.enabled`):
    {"entries": [{"entryId", "event", "metadata", …}]}, answered with
    {"statuses": [{"entryId", "status"}]} — one status per entry. An entry that is not a
    valid event is dropped with its reason logged; a replay for another app is acknowledged
    unhandled; the readable ones go to the handler together; an unexpected exception is a
    RETRY of those. Drops go to `dead_letters` with
    their reasons (then SUCCESS), else Dapr dead-letters them, reasonless."""
    path = request.url.path
    started = time.perf_counter()
    limit = _max_event_bytes(request)
    try:
        body = await request.body()
        bulk = json.loads(body)
        entries = bulk["entries"]
        if not isinstance(entries, list):
            raise TypeError("entries is not a list")
    except (ValueError, KeyError, TypeError) as error:
        # Not a bulk delivery at all: refuse it (daprd retries, then dead-letters).
        log.error("bulk delivery without readable entries", error=str(error))
        return JSONResponse({"detail": f"not a bulk delivery: {error}"}, status_code=400)
    statuses: dict[str, DaprStatus] = {}
    readable: list[BulkEntry] = []
    dropped: dict[str, Outcome] = {}
    messages: dict[str, tuple[bytes, str | None]] = {}  # as delivered, with the Kafka key
    for position, raw_entry in enumerate(entries):
        entry = raw_entry if isinstance(raw_entry, Mapping) else {}
        entry_id = str(entry.get("entryId") or f"#{position}")
        statuses[entry_id] = DaprStatus.RETRY  # until decided; keeps the entries' order
        metadata = entry.get("metadata")
        if not isinstance(metadata, Mapping):
            metadata = {}
        envelope: CloudEvent | None = None
        messages[entry_id] = (_entry_bytes(entry.get("event")), metadata.get(KEY_METADATA))
        try:
            entry_event = _entry_event(entry)
            # No entry can be larger than the whole body: measure only when that is.
            if len(body) > limit:
                size = len(json.dumps(entry_event, separators=(",", ":")).encode())
                if size > limit:
                    raise InvalidEventError(_too_large(size, limit))
            envelope = parse_cloud_event(entry_event)
            other_app = replay_for_another_app(envelope, request)
            if other_app is not None:
                statuses[entry_id] = _not_ours(path, other_app).status
                DELIVERIES.labels(path, "replay", DaprStatus.SUCCESS.value).inc()
                continue
            event = envelope.task_event()
        except InvalidEventError as error:
            log.warning(
                "bulk entry dropped: not a valid event", entry_id=entry_id, reason=str(error)
            )
            statuses[entry_id] = DaprStatus.DROP
            dropped[entry_id] = Outcome.drop(str(error))
            DELIVERIES.labels(path, "unparsed", DaprStatus.DROP.value).inc()
            continue
        readable.append(
            BulkEntry(
                entry_id=entry_id,
                event=event,
                envelope=envelope,
                metadata={str(k): str(v) for k, v in metadata.items()},
            )
        )
    if readable:
        # One handling span per entry, each in the trace of its own CloudEvent.
        traced = [
            EntrySpan(
                name=f"handle {type_label(item.event)}",
                traceparent=item.envelope.traceparent,
                tracestate=item.envelope.tracestate,
                attributes=event_attributes(
                    item.event.event_id, item.event.type, item.event.task_id
                ),
            )
            for item in readable
        ]
        with bulk_spans(traced) as spans:
            readable = [
                replace(item, trace=entry_context(entry_span, item.event.event_id))
                for item, entry_span in zip(readable, spans, strict=True)
            ]
            try:
                outcomes = list(await handler(readable))
                if len(outcomes) != len(readable):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(readable)} events")
            except Exception as error:
                log.exception("bulk handler failed; asking Dapr to retry the batch")
                outcomes = [Outcome.retry(f"{type(error).__name__}: {error}")] * len(readable)
            for entry_span, outcome in zip(spans, outcomes, strict=True):
                mark_outcome(entry_span, outcome.status.value, outcome.reason)
        # One log line per batch and status, not one per entry: a database outage
        # turns every entry of every batch into a RETRY.
        unsuccessful: dict[DaprStatus, list[Outcome]] = {}
        for item, outcome in zip(readable, outcomes, strict=True):
            statuses[item.entry_id] = outcome.status
            DELIVERIES.labels(path, item.event.type, outcome.status.value).inc()
            if outcome.status is not DaprStatus.SUCCESS:
                unsuccessful.setdefault(outcome.status, []).append(outcome)
            if outcome.status is DaprStatus.DROP:
                dropped[item.entry_id] = outcome
        for status, failed in unsuccessful.items():
            log.info(
                "bulk entries not stored",
                status=status.value,
                entries=len(failed),
                of=len(entries),
                reason=failed[0].reason,
            )
    if dead_letters is not None:
        for entry_id, outcome in dropped.items():
            message, key = messages[entry_id]
            answer = await dead_letter_with_reason(dead_letters, outcome, message, key=key)
            statuses[entry_id] = answer.status
    DELIVERY_SECONDS.labels(path).observe(time.perf_counter() - started)
    return JSONResponse(
        {"statuses": [{"entryId": k, "status": v.value} for k, v in statuses.items()]}
    )


# An event larger than this is dropped at the edge (Dapr dead-letters it), never parsed.
DEFAULT_MAX_EVENT_BYTES = 256 * 1024


def _max_event_bytes(request: Request) -> int:
    limit: int = getattr(request.app.state, "max_event_bytes", DEFAULT_MAX_EVENT_BYTES)
    return limit


def _too_large(size: int, limit: int) -> str:
    return f"event of {size} bytes is over the limit of {limit} (TASKEVENTS_MAX_EVENT_BYTES)"


def type_label(event: TaskEvent) -> str:
    """An event type as a metric label: the known types, else `other` — a producer that
    invents types must not invent time series."""
    return event.type if event.known_type is not None else "other"


def _entry_bytes(event: Any) -> bytes:
    """A bulk entry's message as bytes again, for its dead letter."""
    if isinstance(event, str):
        return event.encode()
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _entry_event(entry: Mapping[str, Any]) -> bytes | str | Mapping[str, Any]:
    """A bulk entry's event: daprd sends a CloudEvent as an object; anything else (raw bytes
    it could not read as one) as a string, possibly base64 for binary content."""
    event = entry.get("event")
    if event is None:
        raise InvalidEventError("the bulk entry carries no event")
    if isinstance(event, Mapping | str):
        return event
    raise InvalidEventError(f"the bulk entry's event is a {type(event).__name__}")


GRACEFUL_SHUTDOWN_SECONDS = 10


def serve(app: FastAPI, *, host: str, port: int) -> None:
    """Run a service the same way everywhere: our logging (not uvicorn's), a bounded
    graceful shutdown."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def run_service(
    app_id: str,
    settings_type: Callable[[], SettingsT],
    create_app: Callable[[SettingsT], FastAPI],
    *,
    migrate: Callable[[SettingsT], Coroutine[Any, Any, int]] | None = None,
    server: Callable[[FastAPI, SettingsT], None] | None = None,
    argv: Sequence[str] | None = None,
) -> None:
    """Every service's `main`: `<app-id> [serve]`, and `<app-id> migrate` (apply the
    database migrations and exit; the Helm hook Job) for a service with a database.
    `server` runs the app instead of `serve`, for a service that needs more of uvicorn."""
    import argparse
    import asyncio
    import sys

    commands = ("serve", "migrate") if migrate is not None else ("serve",)
    parser = argparse.ArgumentParser(prog=app_id)
    parser.add_argument(
        "command",
        nargs="?",
        choices=commands,
        default="serve",
        help="serve (the default): run the service"
        + ("; migrate: apply the database migrations and exit" if migrate else ""),
    )
    command = parser.parse_args(argv).command
    settings = settings_type()
    configure_logging(app_id, level=settings.log_level, json=settings.json_logs)
    configure_tracing(app_id)
    if command == "migrate" and migrate is not None:
        sys.exit(asyncio.run(migrate(settings)))
    app = create_app(settings)
    if server is not None:
        server(app, settings)
        return
    serve(app, host=settings.host, port=settings.port)
