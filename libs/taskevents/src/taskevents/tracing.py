"""Traces: OpenTelemetry for every service, set up once by `run_service` from the standard
OTEL_* environment, and the spans the library itself opens.

Tracing is on when an OTLP endpoint is named (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and OTEL_SDK_DISABLED is not true; otherwise nothing is
exported and every span below is the API's no-op span. When on: the FastAPI server span
continues the `traceparent` daprd sends with each delivery; httpx and asyncpg calls become
child spans; a publish carries the current context to daprd (gRPC metadata `traceparent`),
which puts it in the CloudEvent it writes to Kafka, so every subscriber's handling continues
the publisher's trace. A bulk delivery has one HTTP request for many traces: each entry's
span continues that entry's CloudEvent `traceparent` instead.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context, attach, create_key, detach, get_value, set_value
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TraceState
from opentelemetry.util.types import Attributes

if TYPE_CHECKING:
    import grpc.aio
    from fastapi import FastAPI

__all__ = [
    "EntrySpan",
    "Span",  # re-exported for the services' own spans
    "SpanKind",
    "bulk_spans",
    "configure_tracing",
    "context_of",
    "current_event_id",
    "current_ids",
    "current_traceparent",
    "delivery_context",
    "entry_context",
    "event_attributes",
    "grpc_trace_interceptors",
    "instrument_app",
    "link_to",
    "mark_outcome",
    "sampler",
    "span",
    "tracer",
    "tracing_on",
    "tracing_wanted",
    "within",
]

TRACER_NAME = "taskevents"
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# Probes and scrapes are not worth a trace each.
EXCLUDED_URLS = "/health,/ready,/metrics"

_configured = False


def tracing_wanted(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces to be exported."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Export this process's spans over OTLP (gRPC) when the environment asks for it, and
    instrument httpx and asyncpg. Returns whether tracing is on. Idempotent."""
    global _configured
    env = os.environ if env is None else env
    if _configured:
        return True
    if not tracing_wanted(env):
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, when set, win over the app id.
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource, sampler=sampler())
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument()
    try:
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    except ImportError:  # a service without a database has no asyncpg
        pass
    else:
        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    _configured = True
    return True


class NoRootClientSpans(Sampler):
    """Samples every span except a CLIENT span that starts a trace: a database query or HTTP
    call outside any request or delivery (a poller's tick, a readiness probe of the sidecar)
    is no story of its own, and a poller would fill the store with them."""

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decision = Decision.DROP if kind is SpanKind.CLIENT else Decision.RECORD_AND_SAMPLE
        return SamplingResult(decision, attributes)

    def get_description(self) -> str:
        return "NoRootClientSpans"


def sampler() -> Sampler:
    """Children follow their parent's decision (daprd samples by its samplingRate); new
    traces are all kept but for root CLIENT spans."""
    return ParentBased(root=NoRootClientSpans())


def tracing_on() -> bool:
    return _configured


def instrument_app(app: FastAPI) -> None:
    """Server spans for the app's HTTP routes, continuing the caller's `traceparent`."""
    if not _configured:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls=EXCLUDED_URLS)


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def context_of(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The context a W3C `traceparent` (and `tracestate`) names, or None without a valid one."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    context = propagate.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def delivery_context(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The parent of a delivery's handling span: the current span (the server span that
    continues daprd's `traceparent` header) when there is one, else the CloudEvent's."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    return context_of(traceparent, tracestate)


@dataclass(frozen=True, slots=True)
class EntrySpan:
    """What the handling span of one bulk entry is made of."""

    name: str
    traceparent: str | None
    tracestate: str | None
    attributes: Mapping[str, str]


@contextmanager
def bulk_spans(entries: Sequence[EntrySpan]) -> Iterator[list[Span]]:
    """One CONSUMER span per entry of a bulk delivery, each continuing its entry's
    CloudEvent `traceparent` (the request's own server span belongs to none of them). The
    batch is handled in one go (one database round trip): the first entry's span is current
    meanwhile, so the batch's child spans land in its trace, and the others link to it."""
    spans: list[Span] = []
    for entry in entries:
        links = [Link(spans[0].get_span_context())] if spans else []
        started = tracer().start_span(
            entry.name,
            kind=SpanKind.CONSUMER,
            context=context_of(entry.traceparent, entry.tracestate),
            attributes={**entry.attributes, "taskevents.batch_size": len(entries)},
            links=links,
        )
        spans.append(started)
    try:
        if spans:
            with trace.use_span(spans[0], end_on_exit=False):
                yield spans
        else:
            yield spans
    finally:
        for started in spans:
            started.end()


# The event a bulk entry's context is about, for the log lines written within it.
_EVENT_ID = create_key("taskevents.event_id")


def entry_context(entry_span: Span, event_id: str) -> Context:
    """The context a handler enters (`within`) to work on one bulk entry: its span, and its
    event id for the log lines."""
    return set_value(_EVENT_ID, event_id, trace.set_span_in_context(entry_span))


def current_event_id() -> str | None:
    value = get_value(_EVENT_ID)
    return value if isinstance(value, str) else None


@contextmanager
def within(context: Context | None) -> Iterator[None]:
    """Make `context` (a bulk entry's `trace`) current for the block; None changes nothing."""
    if context is None:
        yield
        return
    token = attach(context)
    try:
        yield
    finally:
        detach(token)


def link_to(traceparent: str | None) -> list[Link]:
    """A link to the span a `traceparent` names (a replay to the original publish)."""
    context = context_of(traceparent)
    if context is None:
        return []
    return [Link(trace.get_current_span(context).get_span_context())]


def current_traceparent() -> str | None:
    """The current span as a `traceparent` header value, when there is a valid one."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, in hex, when there is a valid one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return trace.format_trace_id(context.trace_id), trace.format_span_id(context.span_id)


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    context: Context | None = None,
    links: Sequence[Link] = (),
) -> Iterator[Span]:
    """A span around a unit of work (an SMTP send, a fan-out, a relay): current while the
    block runs; an exception marks it failed and propagates."""
    with tracer().start_as_current_span(
        name,
        kind=kind,
        attributes=dict(attributes or {}),
        context=context,
        links=list(links),
    ) as current:
        yield current


def mark_outcome(current: Span, status: str, reason: str | None) -> None:
    """Record a delivery's SUCCESS / RETRY / DROP on its span; anything else than SUCCESS
    is an error status, with the reason."""
    current.set_attribute("taskevents.outcome", status)
    if status != "SUCCESS":
        current.set_status(Status(StatusCode.ERROR, reason or status))


def event_attributes(event_id: str, event_type: str, task_id: str) -> dict[str, str]:
    return {
        "taskevents.event_id": event_id,
        "taskevents.event_type": event_type,
        "taskevents.task_id": task_id,
    }


Continuation = Callable[[Any, Any], Awaitable[Any]]


def grpc_trace_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors for the Dapr gRPC client that send the current context as
    `traceparent` metadata: daprd continues it (its publish span, the CloudEvent's
    `traceparent`). Empty when tracing is off."""
    if not _configured:
        return []
    import grpc.aio

    class TraceContext(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
        async def intercept_unary_unary(
            self, continuation: Continuation, details: Any, request: Any
        ) -> Any:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            if carrier:
                metadata = grpc.aio.Metadata(*(details.metadata or ()), *carrier.items())
                details = details._replace(metadata=metadata)
            return await continuation(details, request)

    return [TraceContext()]
