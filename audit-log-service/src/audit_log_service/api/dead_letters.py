"""The dead letters the audit log keeps, for operators only: list, inspect, replay, discard.
Who replayed or discarded one is the subject of the operator's token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from audit_log_service.api.events import DEFAULT_LIMIT, MAX_LIMIT, Limit, TimeRange, TypeParam
from audit_log_service.bootstrap import DeadLetterDeskDep, EventRepublisherDep
from audit_log_service.handlers import (
    ReplayRefusedError,
    discard_dead_letter,
    replay_dead_letter,
)
from audit_log_service.ports import DeadLetterFilter, DeadLetterStatus, StoredDeadLetter
from taskevents.auth import Operator, operator_only
from taskevents.web import WITHOUT_CONTROL_CHARACTERS

TopicParam = Annotated[
    str, StringConstraints(min_length=1, max_length=300, pattern=WITHOUT_CONTROL_CHARACTERS)
]
# Ids are Postgres bigints: a larger number is no id at all (422), never a database error.
MAX_ID = 2**63 - 1
LetterId = Annotated[
    int, Path(ge=1, le=MAX_ID, description="The dead letter's id (from the list).")
]


class DeadLetterQuery(TimeRange):
    status: DeadLetterStatus | None = None
    original_topic: TopicParam | None = None
    type: TypeParam | None = None
    cursor: Annotated[
        int | None, Field(ge=1, le=MAX_ID, description="next_cursor of the page before")
    ] = None
    limit: Limit = DEFAULT_LIMIT

    def to_filter(self, *, extra: int = 0) -> DeadLetterFilter:
        return DeadLetterFilter(
            status=self.status,
            original_topic=self.original_topic,
            type=self.type,
            since=self.since,
            until=self.until,
            before_id=self.cursor,
            limit=self.limit + extra,
        )


class ReplayFilter(DeadLetterQuery):
    """The body of a bulk replay: which dead letters (default: the new ones), at most
    `limit` of them per call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: DeadLetterStatus | None = "new"
    limit: Limit = MAX_LIMIT


class DeadLetterPage(BaseModel):
    items: list[StoredDeadLetter]
    next_cursor: int | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class ReplayFailure(BaseModel):
    id: int
    reason: str


class BulkReplay(BaseModel):
    replayed: list[int]
    failed: list[ReplayFailure]


def dead_letters_router() -> APIRouter:
    # Every route: operators only (the dependency on the router answers 401/403 first).
    router = APIRouter(
        prefix="/audit", tags=["dead letters"], dependencies=[Depends(operator_only)]
    )

    @router.get("/dead-letters", summary="Dead letters, newest first, a page at a time")
    async def list_dead_letters(
        query: Annotated[DeadLetterQuery, Query()], desk: DeadLetterDeskDep
    ) -> DeadLetterPage:
        rows = await desk.list_dead_letters(query.to_filter(extra=1))
        items = rows[: query.limit]
        next_cursor = items[-1].id if len(rows) > query.limit else None
        return DeadLetterPage(items=items, next_cursor=next_cursor)

    @router.get("/dead-letters/{letter_id}", summary="One dead letter, whole")
    async def get_dead_letter(letter_id: LetterId, desk: DeadLetterDeskDep) -> StoredDeadLetter:
        return _found(await desk.get_dead_letter(letter_id), letter_id)

    @router.post(
        "/dead-letters/replay",
        summary="Replay every dead letter matching a filter (default: the new ones)",
    )
    async def replay_matching(
        body: ReplayFilter,
        desk: DeadLetterDeskDep,
        publisher: EventRepublisherDep,
        operator: Operator,
    ) -> BulkReplay:
        letters = await desk.list_dead_letters(body.to_filter())
        result = BulkReplay(replayed=[], failed=[])
        for letter in letters:
            try:
                await replay_dead_letter(
                    letter.id, operator=operator.user_id, desk=desk, publisher=publisher
                )
            except ReplayRefusedError as error:
                result.failed.append(ReplayFailure(id=letter.id, reason=str(error)))
            else:
                result.replayed.append(letter.id)
        return result

    @router.post(
        "/dead-letters/{letter_id}/replay",
        summary="Publish the dead letter's event to task-events again and mark it replayed",
        responses={409: {"description": "discarded, or no valid event inside"}},
    )
    async def replay(
        letter_id: LetterId,
        desk: DeadLetterDeskDep,
        publisher: EventRepublisherDep,
        operator: Operator,
    ) -> StoredDeadLetter:
        try:
            letter = await replay_dead_letter(
                letter_id, operator=operator.user_id, desk=desk, publisher=publisher
            )
        except ReplayRefusedError as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        return _found(letter, letter_id)

    @router.delete(
        "/dead-letters/{letter_id}",
        summary="Discard a dead letter (it is kept, marked with who discarded it and when)",
    )
    async def discard(
        letter_id: LetterId, desk: DeadLetterDeskDep, operator: Operator
    ) -> StoredDeadLetter:
        letter = await discard_dead_letter(letter_id, operator=operator.user_id, desk=desk)
        return _found(letter, letter_id)

    return router


def _found(letter: StoredDeadLetter | None, letter_id: int) -> StoredDeadLetter:
    if letter is None:
        raise HTTPException(status_code=404, detail=f"no dead letter with id {letter_id}")
    return letter
