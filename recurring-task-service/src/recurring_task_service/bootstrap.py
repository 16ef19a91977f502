"""The wiring: what the service builds at start, what its routes take, and how it stops."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from recurring_task_service.adapters.postgres import MIGRATION_LEDGER, PostgresSchedules
from recurring_task_service.adapters.timer import FiringTimer
from recurring_task_service.firing import RelayPolicy
from recurring_task_service.ports import ParkedOutbox, ScheduleStore, TaskSchedules, Waker
from recurring_task_service.settings import APP_ID, PACKAGE, Settings
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
from taskevents.publisher import EventPublisher
from taskevents.web import ReadinessCheck, RunningServices, services_of, sidecar_check

log = get_logger(__name__)

# APScheduler logs every run of the poll job (once a second); our own log says what fired.
CHATTY_LOGGERS = ("apscheduler.executors", "apscheduler.scheduler")


@dataclass(frozen=True, slots=True)
class Services(RunningServices):
    schedules: ScheduleStore
    task_schedules: TaskSchedules
    waker: Waker
    parked_outbox: ParkedOutbox
    database_ready: ReadinessCheck
    sidecar_ready: ReadinessCheck
    tokens: TokenVerifier
    dead_letters: DeadLetterSink | None = None

    def dead_letter_sink(self) -> DeadLetterSink | None:
        return self.dead_letters

    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        return {"database": self.database_ready, "sidecar": self.sidecar_ready}

    def token_verifier(self) -> TokenVerifier:
        return self.tokens


Bootstrap = Callable[[Settings], AbstractAsyncContextManager[Services]]


def migrations_dir(settings: Settings) -> Path:
    return settings.migrations_dir or packaged_migrations(PACKAGE)


@asynccontextmanager
async def bootstrap(settings: Settings) -> AsyncIterator[Services]:
    """A database that answers is migrated before the service takes requests. One that
    does not only delays that: the pool opens without a connection, the migrations are
    tried again in the background, and until they have run the service is not ready, the
    API and deliveries meet StoreUnavailableError (503, RETRY) and the timer does not fire.
    Broken migrations stop the start."""
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    async with AsyncExitStack() as stack:
        pool = await create_pool(
            str(settings.database_url),
            PoolSettings(
                max_size=settings.database_pool_size,
                connect_timeout_seconds=settings.database_connect_timeout_seconds,
                command_timeout_seconds=settings.database_command_timeout_seconds,
            ),
        )
        stack.push_async_callback(close_pool, pool)
        tokens = start_verifier(settings, stack)
        schema = SchemaStatus()
        schedules = PostgresSchedules(pool, schema)
        publisher = EventPublisher(
            pubsub_name=settings.pubsub_name,
            topic=settings.topic,
            http_port=settings.dapr_http_port,
            grpc_port=settings.dapr_grpc_port,
        )
        stack.push_async_callback(publisher.close)
        sidecar_ready = sidecar_check(settings.dapr_http_port)
        timer = FiringTimer(
            schedules,
            schedules,
            publisher,
            topic=settings.topic,
            poll_seconds=settings.poll_seconds,
            batch_size=settings.claim_batch_size,
            grace=timedelta(seconds=settings.catch_up_grace_seconds),
            sidecar_ready=sidecar_ready,
            relay_policy=RelayPolicy(
                max_attempts=settings.outbox_max_attempts,
                max_backoff=timedelta(seconds=settings.outbox_max_backoff_seconds),
                lease=timedelta(seconds=settings.outbox_lease_seconds),
            ),
        )
        stack.push_async_callback(timer.stop)
        migrations = Migrations(
            dsn=str(settings.database_url),
            directory=migrations_dir(settings),
            ledger=MIGRATION_LEDGER,
            connect_timeout_seconds=settings.database_connect_timeout_seconds,
            database=settings.database_name,
        )
        # The timer fires only once the schema is there.
        await migrate_at_start(migrations, schema, stack, then=timer.start)

        async def database_ready() -> str | None:
            problem = schema.problem() or await database_check(pool)
            return f"{settings.database_name}: {problem}" if problem else None

        yield Services(
            schedules=schedules,
            task_schedules=schedules,
            waker=timer,
            parked_outbox=schedules,
            database_ready=database_ready,
            sidecar_ready=sidecar_ready,
            tokens=tokens,
            dead_letters=start_dead_letters(settings, APP_ID, stack),
        )


def _services(connection: HTTPConnection) -> Services:
    return services_of(connection, Services)


# Async: FastAPI runs a plain function dependency in its thread pool.
async def _schedule_store(connection: HTTPConnection) -> ScheduleStore:
    return _services(connection).schedules


async def _task_schedules(connection: HTTPConnection) -> TaskSchedules:
    return _services(connection).task_schedules


async def _waker(connection: HTTPConnection) -> Waker:
    return _services(connection).waker


async def _parked_outbox(connection: HTTPConnection) -> ParkedOutbox:
    return _services(connection).parked_outbox


ScheduleStoreDep = Annotated[ScheduleStore, Depends(_schedule_store)]
TaskSchedulesDep = Annotated[TaskSchedules, Depends(_task_schedules)]
WakerDep = Annotated[Waker, Depends(_waker)]
ParkedOutboxDep = Annotated[ParkedOutbox, Depends(_parked_outbox)]
