from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ops_console.api.data import data_router
from ops_console.api.login import login_router
from ops_console.api.pages import STATIC_DIR, pages_router
from ops_console.bootstrap import Bootstrap, Services, bootstrap
from ops_console.settings import APP_ID, Settings
from taskevents.web import service_app

SUMMARY = "The operator's console: apps, delivery, lag, dead letters, events."


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    development = settings.environment == "development"
    app = service_app(APP_ID, SUMMARY, lambda: bootstrap(settings), Services, settings)
    app.include_router(data_router())
    if development:
        app.include_router(login_router())
    app.include_router(pages_router(development=development, traces_url=settings.traces_url))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
