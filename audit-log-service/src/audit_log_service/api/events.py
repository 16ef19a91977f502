"""The audit log's read API: events by task, user, type and time, one task's history, and
counts per type and per hour. A user reads their own events; an operator everyone's."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Self

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from audit_log_service.bootstrap import AuditReaderDep
from audit_log_service.ports import EventFilter, EventKey, EventStats, StoredEvent
from taskevents.auth import Caller, forbidden, user_filter_for
from taskevents.web import WITHOUT_CONTROL_CHARACTERS

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
DEFAULT_STATS_RANGE = timedelta(hours=24)
# Per-hour counts: a month of hours is plenty for one answer.
MAX_STATS_RANGE = timedelta(days=31)

IdParam = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=WITHOUT_CONTROL_CHARACTERS)
]
TypeParam = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=WITHOUT_CONTROL_CHARACTERS)
]
Limit = Annotated[
    int, Field(ge=1, le=MAX_LIMIT, description=f"At most this many items (1 to {MAX_LIMIT}).")
]
Since = Annotated[
    AwareDatetime | None,
    Field(description="From this time on (inclusive), ISO 8601 with a time zone."),
]
Until = Annotated[
    AwareDatetime | None,
    Field(description="Before this time (exclusive), ISO 8601 with a time zone."),
]


class InvalidCursorError(ValueError):
    pass


def encode_cursor(key: EventKey) -> str:
    """An opaque token for the row a page ended on."""
    text = json.dumps({"t": key.occurred_at.isoformat(), "id": key.event_id})
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> EventKey:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        fields = json.loads(text)
        key = EventKey(occurred_at=datetime.fromisoformat(fields["t"]), event_id=str(fields["id"]))
    except (binascii.Error, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise InvalidCursorError(
            "cursor is not one this API handed out; pass next_cursor back unchanged"
        ) from None
    if key.occurred_at.tzinfo is None:
        raise InvalidCursorError("cursor is not one this API handed out")
    return key


class TimeRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    since: Since = None
    until: Until = None

    @model_validator(mode="after")
    def _since_before_until(self) -> Self:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class EventQuery(TimeRange):
    # An unknown parameter (say `taskid=`) is an error, not a silent "no filter".
    task_id: IdParam | None = None
    user_id: IdParam | None = None
    type: TypeParam | None = None
    cursor: Annotated[
        str | None, Field(max_length=1000, description="next_cursor of the page before")
    ] = None
    limit: Limit = DEFAULT_LIMIT

    def to_filter(self, *, extra: int = 0) -> EventFilter:
        """`extra` rows beyond the limit tell whether another page follows."""
        try:
            after = decode_cursor(self.cursor) if self.cursor is not None else None
        except InvalidCursorError as error:
            raise _unprocessable("cursor", str(error)) from None
        return EventFilter(
            task_id=self.task_id,
            user_id=self.user_id,
            type=self.type,
            since=self.since,
            until=self.until,
            after=after,
            limit=self.limit + extra,
        )


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Limit = MAX_LIMIT


class StatsQuery(TimeRange):
    user_id: IdParam | None = None

    def bounds(self) -> tuple[datetime, datetime]:
        until = self.until or datetime.now(UTC)
        since = self.since or until - DEFAULT_STATS_RANGE
        if since >= until:
            raise _unprocessable("since", "since must be before until")
        if until - since > MAX_STATS_RANGE:
            raise _unprocessable(
                "until", f"the range is at most {MAX_STATS_RANGE.days} days of hourly counts"
            )
        return since, until


class EventPage(BaseModel):
    items: list[StoredEvent]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class TaskHistory(BaseModel):
    task_id: str
    items: list[StoredEvent]


def _unprocessable(field: str, message: str) -> HTTPException:
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": ["query", field], "msg": message}],
    )


def _json(model: BaseModel) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def events_router() -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["audit"])

    # The pages are built from validated models already: serialise them once, instead of
    # letting FastAPI validate and serialise them again (a page is up to 500 events).
    @router.get(
        "/events", response_model=EventPage, summary="Events, newest first, a page at a time"
    )
    async def list_events(
        query: Annotated[EventQuery, Query()], reader: AuditReaderDep, caller: Caller
    ) -> Response:
        """A user's own events (with no `user_id`, or their own); an operator's, anyone's."""
        query = query.model_copy(
            update={"user_id": user_filter_for(caller, query.user_id, "reading the events")}
        )
        rows = await reader.list_events(query.to_filter(extra=1))
        items = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            last = items[-1]
            next_cursor = encode_cursor(EventKey(last.timestamp, last.event_id))
        return _json(EventPage(items=items, next_cursor=next_cursor))

    @router.get(
        "/tasks/{task_id}/history",
        response_model=TaskHistory,
        summary="One task's events, oldest first",
    )
    async def task_history(
        task_id: Annotated[
            str, Path(min_length=1, max_length=200, pattern=WITHOUT_CONTROL_CHARACTERS)
        ],
        query: Annotated[HistoryQuery, Query()],
        reader: AuditReaderDep,
        caller: Caller,
    ) -> Response:
        """For an operator, or the user whose task it is (403 if any event is another's)."""
        items = await reader.task_history(task_id, query.limit)
        if not caller.operator and any(item.user_id != caller.user_id for item in items):
            raise forbidden("reading the history of another user's task")
        return _json(TaskHistory(task_id=task_id, items=items))

    @router.get("/stats", summary="Counts per type and per hour (default: the last 24 hours)")
    async def event_stats(
        query: Annotated[StatsQuery, Query()], reader: AuditReaderDep, caller: Caller
    ) -> EventStats:
        """A user's counts are of their own events; an operator's of everyone's (or of
        `user_id`)."""
        since, until = query.bounds()
        return await reader.event_stats(
            since, until, user_filter_for(caller, query.user_id, "counting the events")
        )

    return router
