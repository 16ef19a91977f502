"""The dead letters the audit log keeps, for operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from audit_log_service.api.events import DEFAULT_LIMIT, Limit
from audit_log_service.ports import AuditReader, StoredDeadLetter


class DeadLetterQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: Limit = DEFAULT_LIMIT


class DeadLetterPage(BaseModel):
    items: list[StoredDeadLetter]


def dead_letters_router(reader: AuditReader) -> APIRouter:
    router = APIRouter(prefix="/audit", tags=["dead letters"])

    @router.get("/dead-letters", summary="Dead letters, newest first")
    async def list_dead_letters(query: Annotated[DeadLetterQuery, Query()]) -> DeadLetterPage:
        return DeadLetterPage(items=await reader.list_dead_letters(query.limit))

    return router
