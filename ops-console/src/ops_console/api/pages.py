"""The pages: shells rendered by Jinja2, open to anyone since they hold no data; each
page's script fetches its data from /api with the operator's token from sessionStorage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

PACKAGE = Path(__file__).resolve().parent.parent
TEMPLATES = Jinja2Templates(directory=PACKAGE / "templates")
STATIC_DIR = PACKAGE / "static"

# (path, template, title) of the pages in the navigation, in its order.
PAGES = [
    ("/apps", "apps.html", "Apps"),
    ("/pubsub", "pubsub.html", "Pub/sub"),
    ("/dead-letters", "dead_letters.html", "Dead letters"),
    ("/events", "events.html", "Events"),
    ("/control-plane", "control_plane.html", "Control plane"),
]


def pages_router(*, development: bool, traces_url: str = "") -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def render(request: Request, template: str, title: str, **extra: object) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request,
            template,
            {
                "title": title,
                "pages": PAGES,
                "development": development,
                "traces_url": traces_url,
                **extra,
            },
        )

    @router.get("/")
    async def home() -> RedirectResponse:
        return RedirectResponse("/apps")

    @router.get("/login")
    async def login(request: Request) -> HTMLResponse:
        return render(request, "login.html", "Sign in")

    for path, template, title in PAGES:

        def page(request: Request, template: str = template, title: str = title) -> HTMLResponse:
            return render(request, template, title)

        router.add_api_route(path, page, methods=["GET"], response_class=HTMLResponse)

    @router.get("/apps/{app_id}")
    async def app_page(
        request: Request, app_id: Annotated[str, PathParam(max_length=200)]
    ) -> HTMLResponse:
        return render(request, "app.html", app_id, app_id=app_id)

    return router
