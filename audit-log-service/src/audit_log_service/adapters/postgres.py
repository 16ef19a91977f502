"""The audit log in Postgres, over an asyncpg pool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from audit_log_service.ports import (
    DeadLetter,
    Delivery,
    EventFilter,
    StorageUnavailableError,
    StoredDeadLetter,
    StoredEvent,
    UnstorableError,
)
from taskevents.events import TaskEvent

# Trouble that goes away by itself: the database is down, restarting, unreachable, out of
# connections, or the transaction lost a race. A delivery that meets it is retried.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (pool acquire, command) is one too
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,  # connection closed, pool closing
    asyncpg.exceptions.OperatorInterventionError,  # cannot connect now, admin shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
)
# The database refuses these values and always will.
PERMANENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)

EVENT_COLUMNS = (
    "event_id, type, task_id, user_id, occurred_at, received_at, payload, source, trace_id, "
    "schema_version, kafka_partition, kafka_offset"
)
# Only these columns can be filtered on; their names never come from a request.
EVENT_FILTER_COLUMNS = ("task_id", "user_id", "type")
DEAD_LETTER_COLUMNS = (
    "id, message_id, topic, original_topic, event_id, type, task_id, user_id, reason, "
    "first_seen, last_seen, seen_count, status, metadata, raw"
)

INSERT_EVENT = """
INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at, payload, source,
                          trace_id, kafka_partition, kafka_offset, schema_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (event_id) DO NOTHING
"""
UPSERT_DEAD_LETTER = """
INSERT INTO dead_letters (message_id, topic, original_topic, raw, metadata, event_id, type,
                          task_id, user_id, reason)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (message_id) DO UPDATE
   SET last_seen = now(),
       seen_count = dead_letters.seen_count + 1,
       metadata = EXCLUDED.metadata,
       reason = COALESCE(EXCLUDED.reason, dead_letters.reason)
RETURNING seen_count
"""


def describe_db_error(error: BaseException) -> str:
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


@contextmanager
def translated_db_errors() -> Iterator[None]:
    try:
        yield
    except PERMANENT_DB_ERRORS as error:
        raise UnstorableError(describe_db_error(error)) from error
    except TRANSIENT_DB_ERRORS as error:
        raise StorageUnavailableError(describe_db_error(error)) from error


@dataclass
class SchemaStatus:
    """Whether the migrations have run; until they have, every delivery is a RETRY."""

    migrated: bool = False
    failure: str | None = None  # a broken migration: no point trying again
    waiting_for: str | None = None  # why the migrations have not run yet

    def problem(self) -> str | None:
        if self.failure is not None:
            return f"migrations failed: {self.failure}"
        if not self.migrated:
            return f"the schema is not migrated yet: {self.waiting_for or 'migrations pending'}"
        return None


async def _init_connection(connection: Any) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


def events_query(where: EventFilter) -> tuple[str, list[object]]:
    """SELECT for GET /audit/events: the filters that are set, newest first."""
    conditions: list[str] = []
    args: list[object] = []
    for column in EVENT_FILTER_COLUMNS:
        value = getattr(where, column)
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    args.append(where.limit)
    where_clause = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM audit_events{where_clause}"  # noqa: S608 (fixed names)
        f" ORDER BY occurred_at DESC, event_id DESC LIMIT ${len(args)}"
    )
    return sql, args


class PostgresAuditLog:
    """AuditLog and AuditReader over an asyncpg pool, which `open` creates and `close` ends.
    The pool connects on first use (min_size 0), so the service starts, and answers RETRY,
    while the database is away."""

    def __init__(
        self,
        dsn: str,
        schema: SchemaStatus,
        *,
        pool_max_size: int,
        connect_timeout_seconds: float,
        acquire_timeout_seconds: float,
        command_timeout_seconds: float,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._pool_max_size = pool_max_size
        self._connect_timeout_seconds = connect_timeout_seconds
        self._acquire_timeout_seconds = acquire_timeout_seconds
        self._command_timeout_seconds = command_timeout_seconds
        self._pool: Any = None

    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=self._pool_max_size,
            timeout=self._connect_timeout_seconds,
            command_timeout=self._command_timeout_seconds,
            init=_init_connection,
        )

    async def close(self, timeout_seconds: float = 10.0) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout_seconds)
        except TimeoutError:
            pool.terminate()

    @asynccontextmanager
    async def _connection(self, timeout_seconds: float | None = None) -> AsyncIterator[Any]:
        problem = self._schema.problem()
        if problem is not None:
            raise StorageUnavailableError(problem)
        if self._pool is None:
            raise StorageUnavailableError("the database pool is not open")
        timeout = timeout_seconds or self._acquire_timeout_seconds
        with translated_db_errors():
            try:
                connection = await self._pool.acquire(timeout=timeout)
            except TimeoutError:
                raise StorageUnavailableError(
                    f"no database connection within {timeout} s"
                ) from None
            try:
                yield connection
            finally:
                await self._pool.release(connection)

    async def record_event(self, event: TaskEvent, delivery: Delivery) -> bool:
        async with self._connection() as connection:
            status: str = await connection.execute(
                INSERT_EVENT,
                event.event_id,
                event.type,
                event.task_id,
                event.user_id,
                event.timestamp,
                event.payload,
                delivery.source,
                delivery.trace_id,
                delivery.kafka_partition,
                delivery.kafka_offset,
                event.schema_version,
            )
        return status == "INSERT 0 1"

    async def record_dead_letter(self, letter: DeadLetter) -> int:
        async with self._connection() as connection:
            seen_count: int = await connection.fetchval(
                UPSERT_DEAD_LETTER,
                letter.message_id,
                letter.topic,
                letter.original_topic,
                letter.raw,
                dict(letter.metadata),
                letter.event_id,
                letter.type,
                letter.task_id,
                letter.user_id,
                letter.reason,
            )
        return seen_count

    async def list_events(self, where: EventFilter) -> list[StoredEvent]:
        sql, args = events_query(where)
        async with self._connection() as connection:
            rows = await connection.fetch(sql, *args)
        return [_stored_event(row) for row in rows]

    async def task_history(self, task_id: str, limit: int) -> list[StoredEvent]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                f"SELECT {EVENT_COLUMNS} FROM audit_events WHERE task_id = $1"  # noqa: S608
                " ORDER BY occurred_at, received_at, event_id LIMIT $2",
                task_id,
                limit,
            )
        return [_stored_event(row) for row in rows]

    async def list_dead_letters(self, limit: int) -> list[StoredDeadLetter]:
        async with self._connection() as connection:
            rows = await connection.fetch(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters"  # noqa: S608
                " ORDER BY id DESC LIMIT $1",
                limit,
            )
        return [StoredDeadLetter.model_validate(dict(row)) for row in rows]

    async def check(self, timeout_seconds: float) -> str | None:
        """None when the schema is in place and the database answers, else what is wrong."""
        try:
            async with self._connection(timeout_seconds) as connection:
                await connection.fetchval("SELECT 1", timeout=timeout_seconds)
        except StorageUnavailableError as error:
            return str(error)
        return None


def _stored_event(row: Any) -> StoredEvent:
    fields = dict(row)
    fields["timestamp"] = fields.pop("occurred_at")
    return StoredEvent.model_validate(fields)
