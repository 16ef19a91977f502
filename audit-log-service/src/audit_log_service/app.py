from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from audit_log_service.adapters.migrations import (
    default_migrations_dir,
    migrate_database,
    migrate_when_reachable,
)
from audit_log_service.adapters.postgres import PostgresAuditLog, SchemaStatus
from audit_log_service.adapters.republisher import DaprRepublisher
from audit_log_service.api.dead_letters import dead_letters_router
from audit_log_service.api.events import events_router
from audit_log_service.api.subscriptions import add_subscription_routes
from audit_log_service.ports import StorageUnavailableError
from audit_log_service.settings import APP_ID, Settings
from taskevents.logging import get_logger
from taskevents.web import static_probes_router, sidecar_check

logger = get_logger(__name__)


def create_app(settings: Settings) -> FastAPI:
    # Without migrations at start-up, someone runs `audit-log-service migrate` beforehand.
    schema = SchemaStatus(migrated=not settings.migrate_on_start)
    audit_log = PostgresAuditLog(
        settings.database_dsn,
        schema,
        pool_max_size=settings.db_pool_max_size,
        connect_timeout_seconds=settings.db_connect_timeout_seconds,
        acquire_timeout_seconds=settings.db_acquire_timeout_seconds,
        command_timeout_seconds=settings.db_command_timeout_seconds,
        partitions_ahead_months=settings.partitions_ahead_months,
    )
    republisher = DaprRepublisher(
        pubsub_name=settings.pubsub_name,
        topic=settings.topic,
        http_port=settings.dapr_http_port,
        grpc_port=settings.dapr_grpc_port,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await audit_log.open()
        migrator: asyncio.Task[None] | None = None
        maintainer: asyncio.Task[None] | None = None
        try:
            if not schema.migrated:
                migrator = await _migrate_or_keep_trying(settings, schema)
            maintainer = asyncio.create_task(
                _maintain_partitions(audit_log, settings), name="audit-log-partitions"
            )
            logger.info("audit log started", database=settings.database_location)
            yield
        finally:
            for task in (maintainer, migrator):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await republisher.close()
            await audit_log.close()

    app = FastAPI(
        title=APP_ID,
        summary="The system of record: every task event once, every dead letter, a query API.",
        lifespan=lifespan,
    )

    async def database_check() -> str | None:
        return await audit_log.check(settings.ready_timeout_seconds)

    app.include_router(
        static_probes_router(
            APP_ID,
            {"database": database_check, "sidecar": sidecar_check(settings.dapr_http_port)},
        )
    )
    add_subscription_routes(app, audit_log=audit_log, settings=settings)
    app.include_router(events_router(audit_log))
    app.include_router(dead_letters_router(audit_log, republisher))
    app.add_exception_handler(StorageUnavailableError, _database_unavailable)
    return app


async def _migrate_or_keep_trying(
    settings: Settings, schema: SchemaStatus
) -> asyncio.Task[None] | None:
    """Migrate now when the database answers (a broken migration stops the start-up);
    otherwise start serving, answer RETRY, and migrate in the background once it does."""
    directory = settings.migrations_dir or default_migrations_dir()
    try:
        await migrate_database(
            settings.database_dsn,
            directory,
            connect_timeout_seconds=settings.db_connect_timeout_seconds,
        )
    except StorageUnavailableError as error:
        schema.waiting_for = f"database unavailable: {error}"
        logger.warning(
            "database unavailable at start-up; deliveries get RETRY until it answers",
            database=settings.database_location,
            error=str(error),
        )
    else:
        schema.migrated = True
        return None
    return asyncio.create_task(
        migrate_when_reachable(
            settings.database_dsn,
            directory,
            schema,
            connect_timeout_seconds=settings.db_connect_timeout_seconds,
        ),
        name="audit-log-migrations",
    )


MAINTENANCE_RETRY_SECONDS = 30.0


async def _maintain_partitions(audit_log: PostgresAuditLog, settings: Settings) -> None:
    """Now and then: the coming months' partitions, and the retention. A failure (database
    away, schema not migrated yet) is tried again soon; the insert path creates a missing
    partition itself too, so nothing depends on this running on time."""
    while True:
        try:
            dropped = await audit_log.maintain_partitions(settings.retention_months)
        except StorageUnavailableError as error:
            logger.info("partition maintenance postponed", error=str(error))
            await asyncio.sleep(MAINTENANCE_RETRY_SECONDS)
            continue
        except Exception:
            logger.exception("partition maintenance failed")
            await asyncio.sleep(MAINTENANCE_RETRY_SECONDS)
            continue
        if dropped:
            logger.info(
                "retention: dropped old partitions",
                partitions=dropped,
                retention_months=settings.retention_months,
            )
        await asyncio.sleep(settings.maintenance_interval_seconds)


async def _database_unavailable(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(
        {"detail": f"the audit log's database is unavailable: {error}"},
        status_code=503,
        headers={"Retry-After": "5"},
    )
