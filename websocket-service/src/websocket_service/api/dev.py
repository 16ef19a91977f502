"""`POST /dev/token`: a client token for any user, registered only in development."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from taskevents.events import NonEmptyId
from websocket_service.bootstrap import TokenVerifierDep
from websocket_service.settings import Settings


class TokenRequest(BaseModel):
    user_id: NonEmptyId = Field(examples=["user-7"])
    operator: bool = Field(
        default=False,
        description="Grant the operator role (watch every user, work the dead letters).",
    )


class TokenResponse(BaseModel):
    token: str
    user_id: str
    expires_at: datetime


def dev_router(settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/dev", tags=["development"])

    @router.post("/token", responses={503: {"description": "the token key is not loaded yet"}})
    async def issue_token(request: TokenRequest, tokens: TokenVerifierDep) -> TokenResponse:
        if not tokens.has_shared_key:
            raise HTTPException(503, "the token key is not loaded from the secret store yet")
        roles = [settings.operator_role] if request.operator else []
        issued = tokens.issue(
            request.user_id, ttl_seconds=settings.dev_token_ttl_seconds, roles=roles
        )
        return TokenResponse(
            token=issued.token, user_id=issued.user_id, expires_at=issued.expires_at
        )

    return router
