"""The service's wiring: the adapters built from the settings, the background work started,
and the dependencies the routes take."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from notification_service.adapters.dapr_state import DaprNotificationLog, DaprPreferenceStore
from notification_service.adapters.dead_letters import EnvelopeDeadLetters
from notification_service.adapters.postgres import MIGRATIONS, PACKAGE, PostgresLedger
from notification_service.adapters.sms import (
    LogSmsSender,
    NoSmsSender,
    TwilioSmsSender,
    WebhookSmsSender,
)
from notification_service.adapters.smtp import SmtpMailer
from notification_service.deferred import DeferredDelivery
from notification_service.emails import EmailComposer
from notification_service.handlers import Policy, Ports
from notification_service.ports import Channel, Ledger, PreferenceStore, RateLimit, SmsSender
from notification_service.settings import APP_ID, Settings
from notification_service.sms import SmsComposer
from taskevents.auth import TokenVerifier, start_verifier
from taskevents.dead_letters import DeadLetterSink, start_dead_letters
from taskevents.logging import get_logger
from taskevents.postgres import (
    Migrations,
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    database_check,
    migrate_at_start,
    packaged_migrations,
)
from taskevents.secrets import DaprSecrets, SecretsWithFallback
from taskevents.web import ReadinessCheck, RunningServices, services_of, sidecar_check

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Services(RunningServices):
    ports: Ports
    policy: Policy
    # sidecar, smtp, database: each None when it answers, else what is wrong.
    checks: Mapping[str, ReadinessCheck]
    tokens: TokenVerifier
    dead_letters: DeadLetterSink | None = None

    def dead_letter_sink(self) -> DeadLetterSink | None:
        return self.dead_letters

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        return self.checks

    def token_verifier(self) -> TokenVerifier:
        return self.tokens


Bootstrap = Callable[[Settings], AbstractAsyncContextManager[Services]]


@asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Services]:
    # Nothing here waits for the sidecar (it waits for this app to listen first) or for the
    # database (down at start, it only delays the ledger; /ready says so meanwhile).
    async with AsyncExitStack() as stack:
        secrets = secrets_of(settings)
        tokens = start_verifier(settings, stack)
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
        stack.push_async_callback(mailer.close)
        sink = (
            start_dead_letters(settings, APP_ID, stack)
            if settings.dead_letter_with_reason
            else None
        )
        claims = DaprNotificationLog(
            store_name=settings.state_store_name,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
            claim_ttl_seconds=settings.claim_ttl_seconds,
            sent_retention_seconds=settings.sent_retention_seconds,
            timeout_seconds=settings.state_timeout_seconds,
        )
        stack.push_async_callback(claims.close)
        preferences = DaprPreferenceStore(
            store_name=settings.state_store_name,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
            timeout_seconds=settings.state_timeout_seconds,
        )
        stack.push_async_callback(preferences.close)

        dsn = settings.database_url.get_secret_value()
        pool = await create_pool(
            dsn,
            PoolSettings(
                connect_timeout_seconds=settings.state_timeout_seconds,
                command_timeout_seconds=settings.state_timeout_seconds,
            ),
        )
        stack.push_async_callback(close_pool, pool)
        schema = SchemaStatus()
        migrations = Migrations(
            dsn=dsn,
            directory=packaged_migrations(PACKAGE),
            ledger=MIGRATIONS,
            connect_timeout_seconds=settings.state_timeout_seconds,
            database=settings.database_location,
        )
        await migrate_at_start(migrations, schema, stack)
        ledger = PostgresLedger(
            pool,
            namespace=settings.ledger_namespace,
            schema=schema,
            timeout_seconds=settings.state_timeout_seconds,
        )

        async def database() -> str | None:
            return schema.problem() or await database_check(pool)

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
            dead_letters=EnvelopeDeadLetters(sink) if sink is not None else None,
        )
        policy = policy_of(settings)
        deferred = DeferredDelivery(
            ports=ports,
            policy=policy,
            poll_seconds=settings.deferred_poll_seconds,
            batch=settings.deferred_batch,
            lease_seconds=settings.deferred_lease_seconds,
            retention=(
                timedelta(days=settings.sent_retention_days)
                if settings.sent_retention_days
                else None
            ),
        )
        deferred.start()
        stack.push_async_callback(deferred.stop)
        yield Services(
            ports=ports,
            policy=policy,
            checks={
                "sidecar": sidecar_check(settings.dapr_http_port),
                "smtp": mailer.check,
                "database": database,
            },
            tokens=tokens,
            dead_letters=sink,
        )


def policy_of(settings: Settings) -> Policy:
    return Policy(
        event_types=settings.event_types,
        default_channels=frozenset(Channel(c) for c in settings.default_channels),
        urgent_priorities=frozenset(p.lower() for p in settings.urgent_priorities),
        rate_limit=RateLimit(
            count=settings.rate_limit_count, window_seconds=settings.rate_limit_window_seconds
        ),
        sms_on=settings.sms_channel_on,
        claim_wait_seconds=settings.claim_wait_seconds,
        deferred_retry_seconds=settings.deferred_retry_seconds,
        deferred_max_attempts=settings.deferred_max_attempts,
        retry_budget_seconds=settings.retry_budget_seconds,
        retry_first_seconds=settings.retry_first_seconds,
        retry_max_interval_seconds=settings.retry_max_interval_seconds,
        max_event_age_seconds=settings.max_event_age_seconds,
    )


def secrets_of(settings: Settings) -> SecretsWithFallback:
    """The SMTP and Twilio credentials: the secret store's when it has them, else the
    environment's (NOTIFY_SECRET_STORE empty: the environment's only)."""
    store = (
        DaprSecrets(store=settings.secret_store, http_port=settings.dapr_http_port)
        if settings.secret_store
        else None
    )
    password, twilio_token = settings.smtp_password, settings.twilio_auth_token
    return SecretsWithFallback(
        store,
        {
            "SMTP_USERNAME": settings.smtp_username,
            "SMTP_PASSWORD": password.get_secret_value() if password else None,
            "TWILIO_AUTH_TOKEN": twilio_token.get_secret_value() if twilio_token else None,
        },
    )


def sms_sender(settings: Settings, secrets: SecretsWithFallback) -> SmsSender:
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
    if settings.sms_provider == "log":
        return LogSmsSender()
    return NoSmsSender()


# The dependencies of the routes. Async: FastAPI runs a plain function dependency in its
# thread pool, a thread hop on every request.


async def _services(connection: HTTPConnection) -> Services:
    return services_of(connection, Services)


async def _ports(connection: HTTPConnection) -> Ports:
    return (await _services(connection)).ports


async def _policy(connection: HTTPConnection) -> Policy:
    return (await _services(connection)).policy


async def _ledger(connection: HTTPConnection) -> Ledger:
    return (await _services(connection)).ports.ledger


async def _preferences(connection: HTTPConnection) -> PreferenceStore:
    return (await _services(connection)).ports.preferences


PortsDep = Annotated[Ports, Depends(_ports)]
PolicyDep = Annotated[Policy, Depends(_policy)]
LedgerDep = Annotated[Ledger, Depends(_ledger)]
PreferenceStoreDep = Annotated[PreferenceStore, Depends(_preferences)]
