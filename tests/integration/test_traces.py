"""One event, one trace: published through the CLI, handled by every subscriber, and found
whole in Jaeger's query API (scripts/jaeger.sh, started with the stack)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Cluster
from tests.support.stack import Stack
from tests.support.waiting import eventually

SUBSCRIBERS = (
    "audit-log-service",
    "notification-service",
    "recurring-task-service",
    "websocket-service",
)
EVENT_TAG = "taskevents.event_id"


@dataclass(frozen=True)
class TraceSpan:
    span_id: str
    parent_id: str | None
    service: str
    operation: str
    tags: dict[str, Any]


def _database(span: TraceSpan) -> bool:
    return span.tags.get("db.system") == "postgresql"


# What each subscriber's handling span must have below it.
CHILD_SPANS: dict[str, Callable[[TraceSpan], bool]] = {
    "audit-log-service": _database,
    "recurring-task-service": _database,
    "notification-service": lambda span: span.operation == "smtp send",
    "websocket-service": lambda span: span.operation == "websocket fan-out",
}


def spans_of(trace: dict[str, Any]) -> list[TraceSpan]:
    processes = {key: value["serviceName"] for key, value in trace["processes"].items()}
    result = []
    for item in trace["spans"]:
        parents = [r["spanID"] for r in item["references"] if r["refType"] == "CHILD_OF"]
        result.append(
            TraceSpan(
                span_id=item["spanID"],
                parent_id=parents[0] if parents else None,
                service=processes[item["processID"]],
                operation=item["operationName"],
                tags={t["key"]: t["value"] for t in item["tags"]},
            )
        )
    return result


def descendants(spans: list[TraceSpan], root: TraceSpan) -> list[TraceSpan]:
    by_parent: dict[str, list[TraceSpan]] = {}
    for item in spans:
        if item.parent_id:
            by_parent.setdefault(item.parent_id, []).append(item)
    found, todo = [], [root.span_id]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            found.append(child)
            todo.append(child.span_id)
    return found


async def traces_tagged(http: httpx.AsyncClient, stack: Stack, event_id: str) -> set[str]:
    """The ids of the traces in which any of the apps tagged a span with the event id."""
    ids: set[str] = set()
    for service in ("taskevents-cli", *SUBSCRIBERS):
        response = await http.get(
            f"{stack.jaeger_url}/api/traces",
            params={
                "service": service,
                "tags": json.dumps({EVENT_TAG: event_id}),
                "lookback": "1h",
                "limit": "20",
            },
        )
        if response.status_code == 404:  # the service has sent no span yet
            continue
        response.raise_for_status()
        ids.update(t["traceID"] for t in response.json()["data"] or [])
    return ids


async def test_one_event_published_through_the_cli_is_one_trace_across_every_subscriber(
    cluster: Cluster, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user = f"trace-{unique}"
    payload = {
        "title": "Traced",
        "user_email": f"{user}@example.com",
        "recurrence": {"interval_seconds": 3600},
    }
    cli = Path(sys.executable).parent / "taskevents"
    process = await asyncio.create_subprocess_exec(
        str(cli),
        "--dapr-http-port", str(cluster.cli.dapr_http_port),
        "--dapr-grpc-port", str(cluster.cli.dapr_grpc_port),
        "publish", "task.created", "--task-id", f"task-{uuid.uuid4().hex[:12]}",
        "--user-id", user, "--payload", json.dumps(payload),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_endpoint},
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    event_id = stdout.decode().strip()

    def handling(spans: list[TraceSpan], service: str) -> TraceSpan | None:
        return next(
            (
                s
                for s in spans
                if s.service == service
                and s.operation == "handle task.created"
                and s.tags.get(EVENT_TAG) == event_id
            ),
            None,
        )

    def children(spans: list[TraceSpan], service: str) -> list[TraceSpan]:
        handler = handling(spans, service)
        return [] if handler is None else descendants(spans, handler)

    def complete(spans: list[TraceSpan]) -> bool:
        """Every part is in (the apps and the sidecars export on their own schedules): each
        subscriber's handling span with its own child spans, below the CLI's publish."""
        publish = [s for s in spans if s.operation == "publish task-events"]
        below = descendants(spans, publish[0]) if publish else []
        return all(
            handling(spans, service) in below
            and any(expected(child) for child in children(spans, service))
            for service, expected in CHILD_SPANS.items()
        )

    async def whole_trace() -> tuple[set[str], list[TraceSpan]] | None:
        ids = await traces_tagged(http, stack, event_id)
        if len(ids) != 1:
            return (ids, []) if len(ids) > 1 else None
        response = await http.get(f"{stack.jaeger_url}/api/traces/{next(iter(ids))}")
        response.raise_for_status()
        spans = spans_of(response.json()["data"][0])
        return (ids, spans) if complete(spans) else None

    ids, spans = await eventually(whole_trace, timeout=60, what="the event's whole trace in Jaeger")
    assert len(ids) == 1, f"the event is in {len(ids)} traces: {ids}"
    publish = [
        s for s in spans if s.operation == "publish task-events" and s.service == "taskevents-cli"
    ]
    assert len(publish) == 1
    assert publish[0].parent_id is None  # the CLI's publish starts the trace
    assert publish[0].tags.get(EVENT_TAG) == event_id
    # daprd's own spans (the publish and each delivery) are in the same trace.
    services = {s.service for s in spans}
    assert services >= {"taskevents-cli", *SUBSCRIBERS}
    for service in SUBSCRIBERS:
        handler = handling(spans, service)
        assert handler is not None
        assert handler.tags.get("taskevents.outcome") == "SUCCESS", (service, handler.tags)
        # Each handling span descends from the CLI's publish.
        assert handler in descendants(spans, publish[0]), service
