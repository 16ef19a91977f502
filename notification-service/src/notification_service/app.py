from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI

from notification_service.adapters.dapr_state import DaprNotificationLog, DaprPreferenceStore
from notification_service.adapters.dead_letters import DaprDeadLetters
from notification_service.adapters.postgres import PostgresLedger
from notification_service.adapters.secrets import SecretSource
from notification_service.adapters.sms import LogSmsSender, TwilioSmsSender, WebhookSmsSender
from notification_service.adapters.smtp import SmtpMailer
from notification_service.api.notifications import notifications_router
from notification_service.api.preferences import preferences_router
from notification_service.deferred import DeferredDelivery
from notification_service.emails import EmailComposer
from notification_service.handlers import Policy, Ports, dead_letter_with_reason, notify_user
from notification_service.ports import Channel, Ledger, PreferenceStore, RateLimit, SmsSender
from notification_service.settings import APP_ID, Settings
from notification_service.sms import SmsComposer
from taskevents.cloudevents import CloudEvent
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.status import Outcome
from taskevents.web import static_probes_router, sidecar_check, subscription_route

TASK_EVENTS_ROUTE = "/events/task-events"
log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Resources:
    ports: Ports
    policy: Policy
    ledger: PostgresLedger
    preferences: DaprPreferenceStore


def resources(app: FastAPI) -> Resources:
    running: Resources | None = getattr(app.state, "resources", None)
    if running is None:
        raise RuntimeError("the app is not running (its lifespan has not started)")
    return running


def policy_of(settings: Settings) -> Policy:
    return Policy(
        event_types=settings.event_types,
        default_channels=frozenset(Channel(c) for c in settings.default_channels),
        urgent_priorities=frozenset(p.lower() for p in settings.urgent_priorities),
        rate_limit=RateLimit(
            count=settings.rate_limit_count, window_seconds=settings.rate_limit_window_seconds
        ),
        claim_wait_seconds=settings.claim_wait_seconds,
        deferred_retry_seconds=settings.deferred_retry_seconds,
        deferred_max_attempts=settings.deferred_max_attempts,
    )


def sms_sender(settings: Settings, secrets: SecretSource) -> SmsSender:
    if settings.sms_provider == "webhook":
        assert settings.sms_webhook_url is not None  # the settings check it
        token = settings.sms_webhook_token
        return WebhookSmsSender(
            url=str(settings.sms_webhook_url),
            timeout_seconds=settings.sms_timeout_seconds,
            token=token.get_secret_value() if token else None,
        )
    if settings.sms_provider == "twilio":
        assert settings.twilio_account_sid is not None
        return TwilioSmsSender(
            base_url=str(settings.twilio_base_url),
            account_sid=settings.twilio_account_sid,
            from_number=settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            secrets=secrets,
            timeout_seconds=settings.sms_timeout_seconds,
        )
    return LogSmsSender()


def create_app(settings: Settings) -> FastAPI:
    secrets = SecretSource(
        store_name=settings.secret_store,
        http_port=settings.dapr_http_port,
        fallback={
            "SMTP_USERNAME": settings.smtp_username,
            "SMTP_PASSWORD": (
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            "TWILIO_AUTH_TOKEN": (
                settings.twilio_auth_token.get_secret_value()
                if settings.twilio_auth_token
                else None
            ),
        },
    )
    mailer = SmtpMailer(
        host=settings.smtp_host,
        port=settings.smtp_port,
        mail_from=settings.mail_from,
        use_tls=settings.smtp_tls,
        start_tls=settings.smtp_starttls,
        timeout_seconds=settings.smtp_timeout_seconds,
        secrets=secrets,
        validate_certs=settings.smtp_validate_certs,
        cert_bundle=settings.smtp_cert_bundle,
        pool_size=settings.smtp_pool_size,
    )
    policy = policy_of(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Nothing here waits for the sidecar: it waits for this app to listen first.
        claims = DaprNotificationLog(
            store_name=settings.state_store_name,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
            claim_ttl_seconds=settings.claim_ttl_seconds,
            sent_retention_seconds=settings.sent_retention_seconds,
            timeout_seconds=settings.state_timeout_seconds,
        )
        preferences = DaprPreferenceStore(
            store_name=settings.state_store_name,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
            timeout_seconds=settings.state_timeout_seconds,
        )
        ledger = PostgresLedger(
            settings.database_url.get_secret_value(),
            namespace=settings.ledger_namespace,
            timeout_seconds=settings.state_timeout_seconds,
        )
        dead_letters = DaprDeadLetters(
            pubsub_name=settings.pubsub_name,
            topic=settings.dead_letter_topic,
            source=APP_ID,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
        )
        ports = Ports(
            mailer=mailer,
            sms=sms_sender(settings, secrets),
            claims=claims,
            preferences=preferences,
            ledger=ledger,
            emails=EmailComposer(
                link_base_url=str(settings.link_base_url), mail_from=settings.mail_from
            ),
            texts=SmsComposer(
                link_base_url=str(settings.link_base_url),
                include_link=settings.sms_include_link,
            ),
            dead_letters=dead_letters if settings.dead_letter_with_reason else None,
        )
        deferred = DeferredDelivery(
            ports=ports,
            policy=policy,
            ledger=ledger,
            poll_seconds=settings.deferred_poll_seconds,
            batch=settings.deferred_batch,
            lease_seconds=settings.deferred_lease_seconds,
            retention=(
                timedelta(days=settings.sent_retention_days)
                if settings.sent_retention_days
                else None
            ),
        )
        app.state.resources = Resources(
            ports=ports, policy=policy, ledger=ledger, preferences=preferences
        )
        try:
            await ledger.open()
        except Exception as error:  # the database may come later; /ready says so
            log.warning("ledger not reachable at start-up", error=str(error))
        deferred.start()
        try:
            yield
        finally:
            await deferred.stop()
            app.state.resources = None
            await ledger.close()
            await preferences.close()
            await claims.close()
            await dead_letters.close()
            await mailer.close()

    app = FastAPI(
        title=APP_ID,
        summary="Email and SMS for the task events users care about, per user preferences, "
        "never twice for one event and channel.",
        version="0.1.0",
        lifespan=lifespan,
    )

    async def on_task_event(event: TaskEvent, envelope: CloudEvent) -> Outcome:
        running = resources(app)
        outcome = await notify_user(event, ports=running.ports, policy=running.policy)
        return await dead_letter_with_reason(
            outcome,
            event,
            envelope.model_dump(mode="json", exclude_unset=True),
            ports=running.ports,
        )

    def preference_store() -> PreferenceStore:
        return resources(app).preferences

    def ledger_of_app() -> Ledger:
        return resources(app).ledger

    async def database_check() -> str | None:
        return await resources(app).ledger.check()

    subscription_route(app, TASK_EVENTS_ROUTE, on_task_event, token=settings.app_api_token)
    app.include_router(preferences_router(preference_store))
    app.include_router(notifications_router(ledger_of_app))
    app.include_router(
        static_probes_router(
            APP_ID,
            {
                "sidecar": sidecar_check(settings.dapr_http_port),
                "smtp": mailer.check,
                "database": database_check,
            },
        )
    )
    return app
