"""`GET /`: the live page, a static file with no build step."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def page_router() -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def live_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return router
