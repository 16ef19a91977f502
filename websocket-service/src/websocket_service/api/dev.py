"""`POST /dev/token`: a client token for any user, registered only in development."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from taskevents.events import NonEmptyId
from websocket_service.adapters.jwt_tokens import JwtTokens


class TokenRequest(BaseModel):
    user_id: NonEmptyId = Field(examples=["user-7"])


class TokenResponse(BaseModel):
    token: str
    user_id: str
    expires_at: datetime


def dev_router(tokens: JwtTokens, *, ttl_seconds: int) -> APIRouter:
    router = APIRouter(prefix="/dev", tags=["development"])

    @router.post("/token")
    async def issue_token(request: TokenRequest) -> TokenResponse:
        issued = tokens.issue(request.user_id, ttl_seconds=ttl_seconds)
        return TokenResponse(
            token=issued.token, user_id=issued.user_id, expires_at=issued.expires_at
        )

    return router
