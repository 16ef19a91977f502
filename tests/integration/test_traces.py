"""One event, one trace: published through the CLI, handled by every subscriber, and found
whole in Jaeger's query API (scripts/jaeger.sh, started with the stack). A recurring trigger
is a trace of its own (the outbox relay's) whose publish links back to the event that made
its schedule."""

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
    links: list[tuple[int, int]]  # (trace id, span id) of each span it follows from


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
        # OpenTelemetry's span links: Jaeger's FOLLOWS_FROM references (hex ids, which it
        # may write without leading zeros).
        links = [
            (int(r["traceID"], 16), int(r["spanID"], 16))
            for r in item["references"]
            if r["refType"] == "FOLLOWS_FROM"
        ]
        result.append(
            TraceSpan(
                span_id=item["spanID"],
                parent_id=parents[0] if parents else None,
                service=processes[item["processID"]],
                operation=item["operationName"],
                tags={t["key"]: t["value"] for t in item["tags"]},
                links=links,
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
        ids.update(
            t["traceID"] for t in await find_traces(http, stack, service, {EVENT_TAG: event_id})
        )
    return ids


async def find_traces(
    http: httpx.AsyncClient, stack: Stack, service: str, tags: dict[str, str]
) -> list[dict[str, Any]]:
    """The traces in which `service` tagged a span with all of `tags`."""
    response = await http.get(
        f"{stack.jaeger_url}/api/traces",
        params={"service": service, "tags": json.dumps(tags), "lookback": "1h", "limit": "20"},
    )
    if response.status_code == 404:  # the service has sent no span yet
        return []
    response.raise_for_status()
    return list(response.json()["data"] or [])


async def publish_through_cli(
    cluster: Cluster, stack: Stack, user: str, task_id: str, payload: dict[str, Any]
) -> str:
    """Publish a task.created with the CLI, tracing on; its event id."""
    cli = Path(sys.executable).parent / "taskevents"
    process = await asyncio.create_subprocess_exec(
        str(cli),
        "--dapr-http-port", str(cluster.cli.dapr_http_port),
        "--dapr-grpc-port", str(cluster.cli.dapr_grpc_port),
        "publish", "task.created", "--task-id", task_id,
        "--user-id", user, "--payload", json.dumps(payload),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_endpoint},
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()[-2000:]
    return stdout.decode().strip()


async def test_one_event_published_through_the_cli_is_one_trace_across_every_subscriber(
    cluster: Cluster, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user = f"trace-{unique}"
    payload = {
        "title": "Traced",
        "user_email": f"{user}@example.com",
        "recurrence": {"interval_seconds": 3600},
    }
    task_id = f"task-{uuid.uuid4().hex[:12]}"
    event_id = await publish_through_cli(cluster, stack, user, task_id, payload)

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


async def test_a_recurring_trigger_links_to_the_event_that_made_its_schedule(
    cluster: Cluster, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    user = f"trace-{unique}"
    task_id = f"task-{uuid.uuid4().hex[:12]}"
    # Fires once, a second after the schedule is made.
    payload = {"title": "Traced trigger", "recurrence": {"interval_seconds": 1, "max_count": 1}}
    event_id = await publish_through_cli(cluster, stack, user, task_id, payload)

    async def scheduling_spans() -> list[TraceSpan] | None:
        """recurring-task-service's handlings of the task.created: what made the schedule (more
        than one when another recurring app of the session took the event too)."""
        spans = [
            item
            for found in await find_traces(
                http, stack, "recurring-task-service", {EVENT_TAG: event_id}
            )
            for item in spans_of(found)
            if item.operation == "handle task.created" and item.tags.get(EVENT_TAG) == event_id
        ]
        return spans or None

    async def trigger_publish() -> tuple[str, TraceSpan] | None:
        """The relay's publish of the schedule's triggered event, with its trace id."""
        tags = {"taskevents.task_id": task_id, "taskevents.event_type": "task.recurring.triggered"}
        for found in await find_traces(http, stack, "recurring-task-service", tags):
            for item in spans_of(found):
                if (
                    item.operation == "publish task-events"
                    and item.tags.get("taskevents.task_id") == task_id
                ):
                    return found["traceID"], item
        return None

    causes = await eventually(scheduling_spans, timeout=60, what="the schedule's making in Jaeger")
    trigger_trace, publish = await eventually(
        trigger_publish, timeout=60, what="the triggered event's publish in Jaeger"
    )
    (creating_trace,) = await traces_tagged(http, stack, event_id)

    assert int(trigger_trace, 16) != int(creating_trace, 16)  # the relay's trace, not the event's
    [(linked_trace, linked_span)] = publish.links
    assert linked_trace == int(creating_trace, 16)
    assert linked_span in {int(cause.span_id, 16) for cause in causes}
