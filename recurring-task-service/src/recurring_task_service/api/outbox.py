"""Outbox events the relay gave up on (parked), for operators: why, and a way back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel

from recurring_task_service.bootstrap import ParkedOutboxDep
from recurring_task_service.ports import ParkedEvent
from taskevents.auth import Operator

MAX_PARKED_LISTED = 500
# Outbox ids are Postgres bigints: a larger number is no id, not a database error.
OutboxId = Annotated[int, Path(ge=1, le=2**63 - 1)]


class ParkedList(BaseModel):
    parked: list[ParkedEvent]


def outbox_router() -> APIRouter:
    router = APIRouter(prefix="/outbox", tags=["outbox"])

    @router.get("/parked")
    async def list_parked(
        outbox: ParkedOutboxDep,
        _operator: Operator,
        limit: int = Query(default=100, ge=1, le=MAX_PARKED_LISTED),
    ) -> ParkedList:
        """Triggered events that were never published, oldest first, with the reason."""
        return ParkedList(parked=await outbox.parked(limit=limit))

    @router.post(
        "/parked/{entry_id}/requeue",
        status_code=status.HTTP_204_NO_CONTENT,
        responses={404: {"description": "no such parked event"}},
    )
    async def requeue_parked(
        entry_id: OutboxId, outbox: ParkedOutboxDep, _operator: Operator
    ) -> None:
        """Publish a parked event again (same event id), with a fresh attempt count."""
        if not await outbox.requeue(entry_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no parked outbox event {entry_id}")

    return router
