from __future__ import annotations

from fastapi import FastAPI

from notification_service.api.notifications import notifications_router
from notification_service.api.preferences import preferences_router
from notification_service.api.subscriptions import subscriptions_router
from notification_service.bootstrap import Bootstrap, Services, bootstrap
from notification_service.settings import APP_ID, Settings
from taskevents.web import service_app

SUMMARY = (
    "Email and SMS for the task events users care about, per user preferences, "
    "never twice for one event and channel."
)


def create_app(settings: Settings, *, bootstrap: Bootstrap = bootstrap) -> FastAPI:
    app = service_app(APP_ID, SUMMARY, lambda: bootstrap(settings), Services, settings)
    app.include_router(subscriptions_router(settings))
    app.include_router(preferences_router())
    app.include_router(notifications_router())
    return app
