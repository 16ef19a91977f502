"""The audit log's read API: events by task, user and type, and one task's history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from audit_log_service.ports import AuditReader, EventFilter, StoredEvent

DEFAULT_LIMIT = 100
MAX_LIMIT = 500

IdParam = Annotated[str, StringConstraints(min_length=1, max_length=200)]
TypeParam = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Limit = Annotated[
    int, Field(ge=1, le=MAX_LIMIT, description=f"At most this many items (1 to {MAX_LIMIT}).")
]


class EventQuery(BaseModel):
    # An unknown parameter (say `taskid=`) is an error, not a silent "no filter".
    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: IdParam | None = None
    user_id: IdParam | None = None
    type: TypeParam | None = None
    limit: Limit = DEFAULT_LIMIT

    def to_filter(self) -> EventFilter:
        return EventFilter(
            task_id=self.task_id, user_id=self.user_id, type=self.type, limit=self.limit
        )


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Limit = MAX_LIMIT


class EventPage(BaseModel):
    items: list[StoredEvent]


class TaskHistory(BaseModel):
    task_id: str
    items: list[StoredEvent]


def events_router(reader: AuditReader) -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["audit"])

    @router.get("/events", summary="Events, newest first")
    async def list_events(query: Annotated[EventQuery, Query()]) -> EventPage:
        return EventPage(items=await reader.list_events(query.to_filter()))

    @router.get("/tasks/{task_id}/history", summary="One task's events, oldest first")
    async def task_history(
        task_id: Annotated[str, Path(min_length=1, max_length=200)],
        query: Annotated[HistoryQuery, Query()],
    ) -> TaskHistory:
        return TaskHistory(task_id=task_id, items=await reader.task_history(task_id, query.limit))

    return router
