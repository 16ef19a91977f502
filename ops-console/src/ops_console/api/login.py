"""`POST /login/dev-token`, development only: an operator token for the login page, minted
by websocket-service's `POST /dev/token` through the console's sidecar (one place signs
development tokens)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from ops_console.bootstrap import ServicesDep
from ops_console.ports import ServiceUnavailableError
from taskevents.events import NonEmptyId


class LoginRequest(BaseModel):
    user_id: NonEmptyId = Field(examples=["ada"])


def login_router() -> APIRouter:
    router = APIRouter(prefix="/login", tags=["development"])

    @router.post("/dev-token", summary="An operator token for development (not in production)")
    async def dev_token(body: LoginRequest, services: ServicesDep) -> Any:
        app_id = services.settings.token_app_id
        try:
            answer = await services.invoker.invoke(
                app_id, "POST", "dev/token", json={"user_id": body.user_id, "operator": True}
            )
        except ServiceUnavailableError as error:
            raise HTTPException(502, f"{app_id} does not answer: {error}") from None
        if not answer.ok:
            raise HTTPException(502, f"{app_id} answered {answer.status}: {answer.body}")
        return answer.body

    return router
