"""The routes daprd delivers to: task events into the audit log, dead letters into theirs."""

from __future__ import annotations

from fastapi import FastAPI

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
from taskevents.status import Outcome
from taskevents.web import delivery_metadata, subscription_route

TASK_EVENTS_ROUTE = "/events/task-events"
DEAD_LETTERS_ROUTE = "/events/task-events-dlq"


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
