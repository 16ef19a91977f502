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
from audit_log_service.ports import AuditReader, EventFilter, EventKey, EventStats, StoredEvent
from taskevents.auth import Caller, forbidden, user_filter_for
from taskevents.web import WITHOUT_CONTROL_CHARACTERS

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
MAX_SEQ = 2**63 - 1  # a bigint
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
    after_seq: Annotated[
        int | None,
        Field(
            ge=0,
            le=MAX_SEQ,
            description="Commit order: the events committed after this `seq`, oldest "
            "first (0: from the start). Pass the last item's `seq` (or `next_after_seq`) "
            "for what follows. An event committed later always has a larger seq, whatever "
            "its timestamp, so a reader that follows the log misses none and reads none "
            "twice.",
        ),
    ] = None
    after_event_id: Annotated[
        IdParam | None,
        Field(
            description="Commit order, from a stored event: the events committed after "
            "it, oldest first (404 when the event is not stored, or is another user's)."
        ),
    ] = None
    limit: Limit = DEFAULT_LIMIT

    @model_validator(mode="after")
    def _one_position(self) -> Self:
        given = [self.cursor, self.after_seq, self.after_event_id]
        if sum(value is not None for value in given) > 1:
            raise ValueError("give at most one of cursor, after_seq and after_event_id")
        return self

    @property
    def in_commit_order(self) -> bool:
        return self.after_seq is not None or self.after_event_id is not None

    def to_filter(self, *, extra: int = 0, after_seq: int | None = None) -> EventFilter:
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
            after_seq=self.after_seq if after_seq is None else after_seq,
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
        description="Time order: pass as `cursor` for the next (older) page; null on the "
        "last page (and in commit order)."
    )
    next_after_seq: int | None = Field(
        default=None,
        description="Commit order (after_seq, after_event_id): pass as `after_seq` for "
        "what follows — the last item's seq, or the position asked for when nothing "
        "follows yet; null in time order.",
    )


class TaskHistory(BaseModel):
    task_id: str
    items: list[StoredEvent]


def _unprocessable(field: str, message: str) -> HTTPException:
    return HTTPException(
        status_code=422,
        detail=[{"type": "value_error", "loc": ["query", field], "msg": message}],
    )


async def _commit_order_page(query: EventQuery, reader: AuditReader) -> EventPage:
    after_seq = query.after_seq
    if query.after_event_id is not None:
        after_seq = await reader.commit_seq_of(query.after_event_id, query.user_id)
        if after_seq is None:
            raise HTTPException(
                status_code=404,
                detail=f"event {query.after_event_id[:60]} is not in the audit log",
            )
    assert after_seq is not None
    items = await reader.list_events(query.to_filter(after_seq=after_seq))
    return EventPage(
        items=items, next_cursor=None, next_after_seq=items[-1].seq if items else after_seq
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
        """A user's own events (with no `user_id`, or their own); an operator's, anyone's.

        Two orders: newest first by the events' own timestamps, paged with `cursor`
        (the default); or the order the audit log committed them in, oldest first, from
        `after_seq` or `after_event_id` — the order to follow the log in without gaps."""
        query = query.model_copy(
            update={"user_id": user_filter_for(caller, query.user_id, "reading the events")}
        )
        if query.in_commit_order:
            return _json(await _commit_order_page(query, reader))
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
