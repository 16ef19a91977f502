from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from notification_service.adapters.dapr_state import DaprNotificationLog
from notification_service.adapters.smtp import SmtpMailer
from notification_service.emails import EmailComposer
from notification_service.handlers import EmailPolicy, send_email_notification
from notification_service.settings import APP_ID, Settings
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.status import Outcome
from taskevents.web import probes_router, sidecar_check, subscription_route

TASK_EVENTS_ROUTE = "/events/task-events"


@dataclass(frozen=True, slots=True)
class Resources:
    mailer: SmtpMailer
    notifications: DaprNotificationLog
    composer: EmailComposer
    policy: EmailPolicy


def resources(app: FastAPI) -> Resources:
    running: Resources | None = getattr(app.state, "resources", None)
    if running is None:
        raise RuntimeError("the app is not running (its lifespan has not started)")
    return running


def create_app(settings: Settings) -> FastAPI:
    mailer = SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        mail_from=settings.mail_from,
        use_tls=settings.smtp_tls,
        start_tls=settings.smtp_starttls,
        username=settings.smtp_username,
        password=settings.smtp_password,
        timeout_seconds=settings.smtp_timeout_seconds,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Nothing here waits for the sidecar: it waits for this app to listen first.
        notifications = DaprNotificationLog(
            store_name=settings.state_store_name,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
            claim_ttl_seconds=settings.claim_ttl_seconds,
            sent_retention_seconds=settings.sent_retention_seconds,
            timeout_seconds=settings.state_timeout_seconds,
        )
        app.state.resources = Resources(
            mailer=mailer,
            notifications=notifications,
            composer=EmailComposer(
                link_base_url=str(settings.link_base_url), mail_from=settings.mail_from
            ),
            policy=EmailPolicy(
                event_types=settings.event_types, claim_wait_seconds=settings.claim_wait_seconds
            ),
        )
        try:
            yield
        finally:
            app.state.resources = None
            await notifications.close()

    app = FastAPI(
        title=APP_ID,
        summary="Email for the task events users care about, never twice for one event.",
        version="0.1.0",
        lifespan=lifespan,
    )

    async def on_task_event(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        running = resources(app)
        return await send_email_notification(
            event,
            mailer=running.mailer,
            notifications=running.notifications,
            composer=running.composer,
            policy=running.policy,
        )

    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=settings.app_api_token)
    app.include_router(
        probes_router(
            APP_ID,
            {"sidecar": sidecar_check(settings.dapr_http_port), "smtp": mailer.check},
        )
    )
    return app
