"""Structured logging: structlog over the standard library, JSON outside development, with
per-delivery context (event_id, task_id, trace_id) bound through contextvars, and the
current span's trace_id and span_id on every line logged inside one (taskevents.tracing)."""

from __future__ import annotations

import logging
import sys
from contextlib import AbstractContextManager
from typing import Any

import structlog
from opentelemetry import trace

from taskevents.tracing import current_event_id


def add_trace_context(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """trace_id and span_id of the current span, when there is one, and the event id of the
    bulk entry being handled: a log line is found from its trace in Jaeger, and the trace
    from the line. What the delivery bound (the CloudEvent's trace id) is kept: it names the
    same trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", trace.format_trace_id(context.trace_id))
        event_dict.setdefault("span_id", trace.format_span_id(context.span_id))
    # Within one entry of a bulk delivery (a single delivery binds event_id itself).
    if (event_id := current_event_id()) is not None:
        event_dict.setdefault("event_id", event_id)
    return event_dict


def about_event(
    event_id: str | None, task_id: str | None = None, **more: Any
) -> AbstractContextManager[None]:
    """The log lines written in the block name the event (and task) they are about: for
    work on one event outside its delivery (a relay publishing it, a deferred send), which
    binds them itself. `add_trace_context` adds the current span's ids."""
    return structlog.contextvars.bound_contextvars(event_id=event_id, task_id=task_id, **more)


def configure_logging(service: str, *, level: str = "INFO", json: bool = False) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # First: a call below the level costs a level check, not the whole chain.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    # One line per request repeats what our own logs say (health probes, sidecar checks).
    for chatty in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
