from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel

from notification_service.bootstrap import LedgerDep
from notification_service.ports import LedgerUnavailableError
from taskevents.auth import Caller, ensure_may_act_for
from taskevents.web import WITHOUT_CONTROL_CHARACTERS

MAX_ITEMS = 1000


class SentNotification(BaseModel):
    event_id: str
    channel: str
    kind: str
    event_type: str
    task_id: str | None
    recipient: str
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    due_at: datetime | None
    digest_id: str | None


class NotificationList(BaseModel):
    user_id: str
    since: datetime | None
    items: list[SentNotification]


def notifications_router() -> APIRouter:
    router = APIRouter(tags=["notifications"])

    @router.get("/notifications", responses={503: {}})
    async def list_notifications(
        ledger: LedgerDep,
        caller: Caller,
        user_id: Annotated[
            str, Query(min_length=1, max_length=200, pattern=WITHOUT_CONTROL_CHARACTERS)
        ],
        since: Annotated[
            AwareDatetime | None,
            Query(description="Only what changed at or after this time (ISO 8601 with zone)."),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_ITEMS)] = 200,
    ) -> NotificationList:
        """What was sent (or deferred, summarised in a digest, refused), oldest first:
        when, on which channel, with what status. The user themself or an operator."""
        ensure_may_act_for(caller, user_id, "reading the notifications")
        try:
            entries = await ledger.history(user_id, since=since, limit=limit)
        except LedgerUnavailableError as error:
            raise HTTPException(503, f"ledger unavailable: {error}") from error
        return NotificationList(
            user_id=user_id,
            since=since,
            items=[
                SentNotification.model_validate(entry, from_attributes=True) for entry in entries
            ],
        )

    return router
