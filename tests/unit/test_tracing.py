"""taskevents.tracing: when tracing is on, which spans are kept, how a delivery's spans
continue the publisher's trace, and the trace context on log lines and on gRPC calls. The
spans are the SDK's own, kept in its in-memory exporter."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc.aio
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import SpanKind
from structlog.contextvars import merge_contextvars

from taskevents import tracing
from taskevents.logging import about_event, add_trace_context
from taskevents.status import Outcome
from taskevents.web import BulkEntry, deliver_bulk

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_A = "b7ad6b7169203331"
PARENT_B = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_on_only_with_an_endpoint_and_not_disabled(
    env: dict[str, str], wanted: bool
) -> None:
    assert tracing.tracing_wanted(env) is wanted


def test_without_an_endpoint_nothing_is_configured() -> None:
    assert tracing.configure_tracing("x", env={}) is tracing.tracing_on()


def test_a_root_client_span_is_dropped_and_everything_else_kept() -> None:
    sampler = tracing.sampler()
    root = sampler.should_sample(None, 1, "SELECT", kind=SpanKind.CLIENT)
    assert root.decision is Decision.DROP
    for kind in (SpanKind.SERVER, SpanKind.CONSUMER, SpanKind.INTERNAL, SpanKind.PRODUCER):
        assert sampler.should_sample(None, 1, "x", kind=kind).decision is Decision.RECORD_AND_SAMPLE
    parent = tracing.context_of(f"00-{TRACE_A}-{PARENT_A}-01")
    child = sampler.should_sample(parent, int(TRACE_A, 16), "SELECT", kind=SpanKind.CLIENT)
    assert child.decision is Decision.RECORD_AND_SAMPLE  # a query inside a delivery is kept


@pytest.mark.parametrize(
    "header", [None, "", "garbage", f"00-{'0' * 32}-{PARENT_A}-01", f"00-{TRACE_A}-zz-01"]
)
def test_no_context_from_a_missing_or_invalid_traceparent(header: str | None) -> None:
    assert tracing.context_of(header) is None
    assert tracing.link_to(header) == []


def entry(entry_id: str, event_id: str, traceparent: str) -> dict[str, Any]:
    return {
        "entryId": entry_id,
        "metadata": {},
        "event": {
            "id": event_id,
            "source": "test",
            "type": "com.dapr.event.sent",
            "traceparent": traceparent,
            "data": {
                "event_id": event_id,
                "type": "task.created",
                "task_id": f"t-{event_id}",
                "user_id": "u-1",
                "timestamp": "2026-11-22T10:15:00Z",
            },
        },
    }


def test_each_bulk_entry_is_handled_in_the_trace_of_its_own_cloud_event(
    spans: InMemorySpanExporter,
) -> None:
    seen_in: list[str] = []
    app = FastAPI()

    @app.post("/events/bulk")
    async def bulk(request: Request) -> JSONResponse:
        async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
            outcomes = []
            for item in entries:
                with tracing.within(item.trace):
                    ids = tracing.current_ids()
                    assert ids is not None
                    seen_in.append(ids[0])
                    line = add_trace_context(None, "info", {"event": "handled"})
                    assert line["event_id"] == item.event.event_id
                    assert line["trace_id"] == ids[0]
                outcomes.append(
                    Outcome.success() if item.event.event_id == "a" else Outcome.retry("later")
                )
            return outcomes

        return await deliver_bulk(request, handle)

    body = {
        "entries": [
            entry("1", "a", f"00-{TRACE_A}-{PARENT_A}-01"),
            entry("2", "b", f"00-{TRACE_B}-{PARENT_B}-01"),
        ]
    }
    response = TestClient(app).post("/events/bulk", content=json.dumps(body))
    assert [s["status"] for s in response.json()["statuses"]] == ["SUCCESS", "RETRY"]

    assert seen_in == [TRACE_A, TRACE_B]  # the handler worked in each entry's trace
    handled = {
        s.attributes["taskevents.event_id"]: s
        for s in spans.get_finished_spans()
        if s.attributes and "taskevents.event_id" in s.attributes
    }
    first, second = handled["a"], handled["b"]
    assert first.name == second.name == "handle task.created"
    assert (trace.format_trace_id(first.context.trace_id), first.parent.span_id) == (  # type: ignore[union-attr]
        TRACE_A,
        int(PARENT_A, 16),
    )
    assert trace.format_trace_id(second.context.trace_id) == TRACE_B
    assert second.parent.span_id == int(PARENT_B, 16)  # type: ignore[union-attr]
    # Handled in one batch with the first: linked to it.
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert first.attributes["taskevents.outcome"] == "SUCCESS"  # type: ignore[index]
    assert second.attributes["taskevents.outcome"] == "RETRY"  # type: ignore[index]
    assert not second.status.is_ok


def test_log_lines_inside_a_span_carry_its_trace_and_span_ids(
    spans: InMemorySpanExporter,
) -> None:
    assert add_trace_context(None, "info", {"event": "outside"}) == {"event": "outside"}
    with tracing.span("work") as current:
        line = add_trace_context(None, "info", {"event": "inside"})
        context = current.get_span_context()
    assert line["trace_id"] == trace.format_trace_id(context.trace_id)
    assert line["span_id"] == trace.format_span_id(context.span_id)
    # A trace id bound by the delivery stays.
    with tracing.span("work"):
        assert add_trace_context(None, "info", {"trace_id": TRACE_A})["trace_id"] == TRACE_A


def test_a_log_line_about_one_event_outside_a_delivery_names_it_and_its_span(
    spans: InMemorySpanExporter,
) -> None:
    def line() -> dict[str, Any]:
        fields = merge_contextvars(None, "info", {"event": "published"})
        return dict(add_trace_context(None, "info", fields))

    with about_event("event-1", "task-1", outbox_id=7), tracing.span("outbox relay") as current:
        inside = line()
        context = current.get_span_context()
    assert inside == {
        "event": "published",
        "event_id": "event-1",
        "task_id": "task-1",
        "outbox_id": 7,
        "trace_id": trace.format_trace_id(context.trace_id),
        "span_id": trace.format_span_id(context.span_id),
    }
    assert line() == {"event": "published"}  # nothing stays bound after the block


async def test_the_grpc_interceptor_sends_the_current_context_as_traceparent(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tracing.grpc_trace_interceptors() == [] or tracing.tracing_on()
    monkeypatch.setattr(tracing, "_configured", True)
    (interceptor,) = tracing.grpc_trace_interceptors()
    sent: list[Any] = []

    async def continuation(details: Any, request: Any) -> str:
        sent.append(details.metadata)
        return "done"

    details = grpc.aio.ClientCallDetails(
        "/dapr.proto.runtime.v1.Dapr/PublishEvent", None, grpc.aio.Metadata(("a", "1")), None, None
    )
    with tracing.span("publish") as current:
        assert await interceptor.intercept_unary_unary(continuation, details, object()) == "done"
        expected = tracing.current_traceparent()
    assert expected is not None
    assert current.get_span_context().is_valid
    metadata = dict(sent[0])
    assert metadata == {"a": "1", "traceparent": expected}
