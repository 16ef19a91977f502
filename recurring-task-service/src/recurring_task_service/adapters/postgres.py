"""The schedules in Postgres (asyncpg)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import asyncpg

from recurring_task_service.ports import ScheduleExistsError, StoreUnavailableError
from recurring_task_service.schedules import (
    CronRule,
    IntervalRule,
    NewSchedule,
    Rule,
    Schedule,
    rule_from_fields,
)
from taskevents.logging import get_logger

log = get_logger(__name__)

# Errors that say "the database is not there just now", as opposed to a bug in a query.
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)
WAIT_STEP_SECONDS = 0.5

P = ParamSpec("P")
T = TypeVar("T")


async def connect(url: str, *, size: int, wait_seconds: float) -> asyncpg.Pool:
    """A pool, once Postgres answers; waits up to `wait_seconds` for it."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            pool: asyncpg.Pool = await asyncpg.create_pool(
                url, min_size=1, max_size=size, init=_init_connection
            )
        except UNAVAILABLE as error:
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"Postgres did not answer within {wait_seconds:.0f}s: {error}"
                ) from error
            log.info("waiting for Postgres", error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(WAIT_STEP_SECONDS)
        else:
            return pool


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def _translating_outages(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except UNAVAILABLE as error:
            raise StoreUnavailableError(f"{type(error).__name__}: {error}") from error

    return wrapper


class PostgresSchedules:
    """ScheduleStore, TaskSchedules and DueSchedules over one pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_translating_outages
    async def create(self, new: NewSchedule) -> Schedule:
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(
                """INSERT INTO recurring_schedules
                        (task_id, user_id, cron, interval_seconds, timezone, payload, next_fire_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    ON CONFLICT (task_id) DO NOTHING
                    RETURNING *""",
                *_rule_values(new),
            )
            if row is None:
                existing = await connection.fetchval(
                    "SELECT id FROM recurring_schedules WHERE task_id = $1", new.task_id
                )
                raise ScheduleExistsError(new.task_id, existing)
        return _schedule(row)

    @_translating_outages
    async def get(self, schedule_id: uuid.UUID) -> Schedule | None:
        row = await self._pool.fetchrow(
            "SELECT * FROM recurring_schedules WHERE id = $1", schedule_id
        )
        return _schedule(row) if row is not None else None

    @_translating_outages
    async def list_for_user(self, user_id: str | None, *, limit: int) -> list[Schedule]:
        rows = await self._pool.fetch(
            """SELECT * FROM recurring_schedules
                WHERE $1::text IS NULL OR user_id = $1
                ORDER BY created_at, id LIMIT $2""",
            user_id,
            limit,
        )
        return [_schedule(row) for row in rows]

    @_translating_outages
    async def delete(self, schedule_id: uuid.UUID) -> bool:
        deleted = await self._pool.fetchval(
            "DELETE FROM recurring_schedules WHERE id = $1 RETURNING id", schedule_id
        )
        return deleted is not None

    @_translating_outages
    async def put_for_task(self, new: NewSchedule) -> Schedule:
        row = await self._pool.fetchrow(
            """INSERT INTO recurring_schedules AS s
                    (task_id, user_id, cron, interval_seconds, timezone, payload, next_fire_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (task_id) DO UPDATE SET
                    user_id = EXCLUDED.user_id,
                    cron = EXCLUDED.cron,
                    interval_seconds = EXCLUDED.interval_seconds,
                    timezone = EXCLUDED.timezone,
                    payload = EXCLUDED.payload,
                    next_fire_at = CASE
                        WHEN s.active
                         AND s.cron IS NOT DISTINCT FROM EXCLUDED.cron
                         AND s.interval_seconds IS NOT DISTINCT FROM EXCLUDED.interval_seconds
                         AND s.timezone = EXCLUDED.timezone
                        THEN s.next_fire_at ELSE EXCLUDED.next_fire_at END,
                    active = true,
                    updated_at = now()
                RETURNING *""",
            *_rule_values(new),
        )
        return _schedule(row)

    @_translating_outages
    async def delete_for_task(self, task_id: str) -> bool:
        deleted = await self._pool.fetchval(
            "DELETE FROM recurring_schedules WHERE task_id = $1 RETURNING id", task_id
        )
        return deleted is not None

    @_translating_outages
    async def next_fire_at(self) -> datetime | None:
        earliest: datetime | None = await self._pool.fetchval(
            "SELECT min(next_fire_at) FROM recurring_schedules WHERE active"
        )
        return earliest

    @asynccontextmanager
    async def claim_due(self, *, limit: int) -> AsyncIterator[_Claimed]:
        try:
            async with self._pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(
                    """SELECT *, now() AS claimed_at FROM recurring_schedules
                        WHERE active AND next_fire_at <= now()
                        ORDER BY next_fire_at
                        LIMIT $1
                        FOR UPDATE SKIP LOCKED""",
                    limit,
                )
                now = rows[0]["claimed_at"] if rows else datetime.now(UTC)
                claimed = _Claimed(now, [_schedule(row) for row in rows])
                yield claimed
                if claimed.advances:
                    await connection.executemany(
                        """UPDATE recurring_schedules SET
                               next_fire_at = coalesce($2, next_fire_at),
                               active = $2 IS NOT NULL,
                               last_fired_at = coalesce($3, last_fired_at),
                               fire_count = fire_count + CASE WHEN $3 IS NULL THEN 0 ELSE 1 END,
                               updated_at = now()
                           WHERE id = $1""",
                        claimed.advances,
                    )
        except UNAVAILABLE as error:
            raise StoreUnavailableError(f"{type(error).__name__}: {error}") from error


@dataclass(slots=True)
class _Claimed:
    now: datetime
    schedules: Sequence[Schedule]
    advances: list[tuple[uuid.UUID, datetime | None, datetime | None]] = field(default_factory=list)

    def advance(
        self, schedule: Schedule, *, next_fire_at: datetime | None, fired_at: datetime | None
    ) -> None:
        self.advances.append((schedule.id, next_fire_at, fired_at))


def _rule_values(new: NewSchedule) -> tuple[Any, ...]:
    cron = new.rule.expression if isinstance(new.rule, CronRule) else None
    interval = new.rule.seconds if isinstance(new.rule, IntervalRule) else None
    return (
        new.task_id,
        new.user_id,
        cron,
        interval,
        new.rule.timezone,
        dict(new.payload),
        new.next_fire_at,
    )


def _schedule(row: asyncpg.Record) -> Schedule:
    rule: Rule = rule_from_fields(
        cron=row["cron"], interval_seconds=row["interval_seconds"], timezone=row["timezone"]
    )
    return Schedule(
        id=row["id"],
        task_id=row["task_id"],
        user_id=row["user_id"],
        rule=rule,
        payload=row["payload"],
        next_fire_at=row["next_fire_at"],
        last_fired_at=row["last_fired_at"],
        fire_count=row["fire_count"],
        active=row["active"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
