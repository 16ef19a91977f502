"""The audit log's wiring: the adapters it runs on, what starts and stops with it, and the
dependencies through which the routes reach them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from audit_log_service.adapters.postgres import AUDIT_MIGRATIONS, PostgresAuditLog
from audit_log_service.adapters.republisher import DaprRepublisher
from audit_log_service.metrics import PARTITIONS_DROPPED
from audit_log_service.ports import (
    AuditLog,
    AuditReader,
    DeadLetterDesk,
    EventRepublisher,
    StorageUnavailableError,
)
from audit_log_service.settings import APP_ID, Settings
from taskevents.auth import TokenVerifier, start_verifier
from taskevents.background import in_background
from taskevents.dead_letters import DeadLetterSink, start_dead_letters
from taskevents.logging import get_logger
from taskevents.postgres import (
    Migrations,
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    migrate_at_start,
)
from taskevents.web import ReadinessCheck, RunningServices, services_of, sidecar_check

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Services(RunningServices):
    audit_log: AuditLog
    reader: AuditReader
    desk: DeadLetterDesk
    republisher: EventRepublisher
    database_check: ReadinessCheck
    sidecar_check: ReadinessCheck
    tokens: TokenVerifier
    dead_letters: DeadLetterSink | None = None

    def dead_letter_sink(self) -> DeadLetterSink | None:
        return self.dead_letters

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        return {"database": self.database_check, "sidecar": self.sidecar_check}

    def token_verifier(self) -> TokenVerifier:
        return self.tokens


Bootstrap = Callable[[Settings], AbstractAsyncContextManager[Services]]


@contextlib.asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Services]:
    async with AsyncExitStack() as stack:
        # Without migrations at start-up, someone runs `audit-log-service migrate` beforehand.
        schema = SchemaStatus(migrated=not settings.migrate_on_start)
        pool = await create_pool(
            settings.database_dsn,
            PoolSettings(
                max_size=settings.db_pool_max_size,
                connect_timeout_seconds=settings.db_connect_timeout_seconds,
                command_timeout_seconds=settings.db_command_timeout_seconds,
            ),
        )
        stack.push_async_callback(close_pool, pool)
        tokens = start_verifier(settings, stack)
        audit_log = PostgresAuditLog(
            pool,
            schema,
            acquire_timeout_seconds=settings.db_acquire_timeout_seconds,
            partitions_ahead_months=settings.partitions_ahead_months,
        )
        republisher = DaprRepublisher(
            pubsub_name=settings.pubsub_name,
            topic=settings.topic,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
            source=APP_ID,
        )
        stack.push_async_callback(republisher.close)
        if not schema.migrated:
            await migrate_at_start(_migrations(settings), schema, stack)
        in_background(stack, _maintain_partitions(audit_log, settings), name="audit-log-partitions")

        async def database_check() -> str | None:
            return await audit_log.check(settings.ready_timeout_seconds)

        log.info("audit log started", database=settings.database_location)
        yield Services(
            audit_log=audit_log,
            reader=audit_log,
            desk=audit_log,
            republisher=republisher,
            database_check=database_check,
            sidecar_check=sidecar_check(settings.dapr_http_port),
            tokens=tokens,
            dead_letters=start_dead_letters(settings, APP_ID, stack),
        )


def _migrations(settings: Settings) -> Migrations:
    return Migrations(
        dsn=settings.database_dsn,
        directory=settings.migrations_dir,
        ledger=AUDIT_MIGRATIONS,
        connect_timeout_seconds=settings.db_connect_timeout_seconds,
        database=settings.database_location,
    )


MAINTENANCE_RETRY_SECONDS = 30.0


async def _maintain_partitions(audit_log: PostgresAuditLog, settings: Settings) -> None:
    """Now and then: the coming months' partitions, and the retention. A failure (database
    away, schema not migrated yet) is looked at again soon; the insert path creates a
    missing partition itself too, so nothing depends on this running on time."""
    while True:
        try:
            dropped = await audit_log.maintain_partitions(settings.retention_months)
        except StorageUnavailableError as error:
            log.info("partition maintenance postponed", error=str(error))
            await asyncio.sleep(MAINTENANCE_RETRY_SECONDS)
            continue
        except Exception:
            log.exception("partition maintenance failed")
            await asyncio.sleep(MAINTENANCE_RETRY_SECONDS)
            continue
        if dropped:
            PARTITIONS_DROPPED.inc(len(dropped))
            log.info(
                "retention: dropped old partitions",
                partitions=dropped,
                retention_months=settings.retention_months,
            )
        await asyncio.sleep(settings.maintenance_interval_seconds)


# The dependencies the routes take. Async: FastAPI runs a plain function dependency in its
# thread pool, a thread hop on every request and every delivered batch.


async def _services(connection: HTTPConnection) -> Services:
    return services_of(connection, Services)


async def _audit_log(connection: HTTPConnection) -> AuditLog:
    return (await _services(connection)).audit_log


async def _reader(connection: HTTPConnection) -> AuditReader:
    return (await _services(connection)).reader


async def _desk(connection: HTTPConnection) -> DeadLetterDesk:
    return (await _services(connection)).desk


async def _republisher(connection: HTTPConnection) -> EventRepublisher:
    return (await _services(connection)).republisher


AuditLogDep = Annotated[AuditLog, Depends(_audit_log)]
AuditReaderDep = Annotated[AuditReader, Depends(_reader)]
DeadLetterDeskDep = Annotated[DeadLetterDesk, Depends(_desk)]
EventRepublisherDep = Annotated[EventRepublisher, Depends(_republisher)]
