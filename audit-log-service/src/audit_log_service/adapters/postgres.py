"""The audit log in Postgres, over an asyncpg pool."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg

from audit_log_service.ports import (
    DeadLetter,
    DeadLetterFilter,
    Delivery,
    EventFilter,
    EventStats,
    HourCount,
    StorageUnavailableError,
    StoredDeadLetter,
    StoredEvent,
    UnstorableError,
)
from taskevents.events import TaskEvent
from taskevents.postgres import MigrationLedger, SchemaStatus, translated_db_errors
from taskevents.status import DEAD_LETTER_SOURCE_HEADER

# Where the audit log records its migrations, and the advisory lock its replicas take to
# apply them ("audit_lg" in ASCII): the names older releases used, so their databases
# upgrade in place.
AUDIT_MIGRATIONS = MigrationLedger(table="audit_schema_migrations", lock_key=0x61756469745F6C67)

EVENT_COLUMNS = (
    "event_id, type, task_id, user_id, occurred_at, received_at, payload, source, trace_id, "
    "schema_version, kafka_partition, kafka_offset, commit_seq"
)
# Only these columns can be filtered on; their names never come from a request.
EVENT_FILTER_COLUMNS = ("task_id", "user_id", "type")
DEAD_LETTER_COLUMNS = (
    "id, message_id, topic, original_topic, event_id, type, task_id, user_id, reason, "
    # The app that gave up, as it said in its dead letter's headers (kept in metadata).
    f"metadata->>'{DEAD_LETTER_SOURCE_HEADER}' AS app, "
    "first_seen, last_seen, seen_count, status, replay_count, replayed_at, replayed_by, "
    "discarded_at, discarded_by, metadata, raw"
)
DEAD_LETTER_FILTER_COLUMNS = ("status", "original_topic", "type")

# A whole batch in one statement: the ids are claimed in audit_event_ids (see migration
# 0003) and only the rows whose id was claimed here are written, in the same transaction.
# DISTINCT ON drops an id repeated inside the batch (a redelivery in the same batch). Each
# id gets its commit_seq (migration 0006) in the order of the batch, straight from the
# sequence: the statement runs after COMMIT_ORDER_LOCK, in the same transaction (the column
# default, audit_events_next_commit_seq(), takes the lock itself, for any other writer).
INSERT_EVENTS = """
WITH batch AS (
    SELECT DISTINCT ON (event_id) *
      FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                  $6::text[], $7::text[], $8::text[], $9::integer[], $10::bigint[],
                  $11::integer[]) WITH ORDINALITY
           AS b(event_id, type, task_id, user_id, occurred_at, payload, source, trace_id,
                kafka_partition, kafka_offset, schema_version, n)
     ORDER BY event_id, n
), claimed AS (
    INSERT INTO audit_event_ids (event_id, commit_seq)
    SELECT event_id, nextval('audit_events_commit_seq') FROM batch ORDER BY n
    ON CONFLICT (event_id) DO NOTHING
    RETURNING event_id, commit_seq
)
INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at, payload, source,
                          trace_id, kafka_partition, kafka_offset, schema_version, commit_seq)
SELECT b.event_id, b.type, b.task_id, b.user_id, b.occurred_at, b.payload::jsonb, b.source,
       b.trace_id, b.kafka_partition, b.kafka_offset, b.schema_version, c.commit_seq
  FROM batch b JOIN claimed c USING (event_id)
RETURNING event_id
"""
# Numbers in commit order come from one writer at a time (migration 0006): a batch takes
# the lock before it claims any id, so two replicas never wait on each other's claims
# while holding it ("audit_sq" in ASCII; the same key as audit_events_next_commit_seq()).
COMMIT_ORDER_LOCK = "SELECT pg_advisory_xact_lock(7022629598040912753)"
# Where an event sits in commit order; for a user, only if it is theirs.
COMMIT_SEQ_OF = """
SELECT i.commit_seq
  FROM audit_event_ids i
 WHERE i.event_id = $1
   AND ($2::text IS NULL
        OR EXISTS (SELECT 1 FROM audit_events e
                    WHERE e.user_id = $2 AND e.commit_seq = i.commit_seq))
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
MARK_REPLAYED = f"""
UPDATE dead_letters
   SET status = 'replayed', replay_count = replay_count + 1, replayed_at = now(),
       replayed_by = $2
 WHERE id = $1
RETURNING {DEAD_LETTER_COLUMNS}
"""  # noqa: S608 (fixed names)
MARK_DISCARDED = f"""
UPDATE dead_letters
   SET status = 'discarded', discarded_at = now(), discarded_by = $2
 WHERE id = $1
RETURNING {DEAD_LETTER_COLUMNS}
"""  # noqa: S608 (fixed names)
EVENT_STATS = """
SELECT type, date_trunc('hour', occurred_at, 'UTC') AS hour, count(*) AS count
  FROM audit_events
 WHERE occurred_at >= $1 AND occurred_at < $2
 GROUP BY type, hour
"""
# One user's counts (what a user who is not an operator sees): the (user_id, occurred_at) index.
EVENT_STATS_OF_USER = """
SELECT type, date_trunc('hour', occurred_at, 'UTC') AS hour, count(*) AS count
  FROM audit_events
 WHERE user_id = $3 AND occurred_at >= $1 AND occurred_at < $2
 GROUP BY type, hour
"""
# Partitions: how many months ahead exist, and how long rows are kept.
ENSURE_PARTITIONS = "SELECT audit_events_ensure_partitions(now(), $1)"
DROP_PARTITIONS = "SELECT audit_events_drop_partitions_before($1) AS dropped"
# One replica at a time maintains the partitions ("audit_pt" in ASCII).
MAINTENANCE_LOCK_KEY = 0x61756469745F7074
# A row whose month has no partition yet: Postgres says "no partition of relation … found".
NO_PARTITION = "no partition of relation"


class _Where:
    """Conditions joined with AND, and their numbered parameters."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[object] = []

    def param(self, value: object) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def equal(self, columns: Sequence[str], source: object) -> None:
        for column in columns:
            value = getattr(source, column)
            if value is not None:
                self.conditions.append(f"{column} = {self.param(value)}")

    def time_range(self, column: str, since: object | None, until: object | None) -> None:
        if since is not None:
            self.conditions.append(f"{column} >= {self.param(since)}")
        if until is not None:
            self.conditions.append(f"{column} < {self.param(until)}")

    def clause(self) -> str:
        return f" WHERE {' AND '.join(self.conditions)}" if self.conditions else ""


def events_query(where: EventFilter) -> tuple[str, list[object]]:
    """SELECT for GET /audit/events: the filters that are set, newest first, keyset-paged
    on (occurred_at, event_id) — a total order of values that never change, so a row is
    on exactly one page however many rows are inserted meanwhile. With `after_seq`: the
    rows committed after it, in commit order (migration 0006), for readers that follow
    the log as it grows."""
    sql_where = _Where()
    sql_where.equal(EVENT_FILTER_COLUMNS, where)
    sql_where.time_range("occurred_at", where.since, where.until)
    order = "occurred_at DESC, event_id DESC"
    if where.after_seq is not None:
        sql_where.conditions.append(f"commit_seq > {sql_where.param(where.after_seq)}")
        order = "commit_seq"
    elif where.after is not None:
        occurred_at = sql_where.param(where.after.occurred_at)
        event_id = sql_where.param(where.after.event_id)
        sql_where.conditions.append(f"(occurred_at, event_id) < ({occurred_at}, {event_id})")
    clause = sql_where.clause()
    limit = sql_where.param(where.limit)
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM audit_events{clause}"  # noqa: S608 (fixed names)
        f" ORDER BY {order} LIMIT {limit}"
    )
    return sql, sql_where.args


def dead_letters_query(where: DeadLetterFilter) -> tuple[str, list[object]]:
    """SELECT for GET /audit/dead-letters: newest first, keyset-paged on id."""
    sql_where = _Where()
    sql_where.equal(DEAD_LETTER_FILTER_COLUMNS, where)
    sql_where.time_range("first_seen", where.since, where.until)
    if where.before_id is not None:
        sql_where.conditions.append(f"id < {sql_where.param(where.before_id)}")
    clause = sql_where.clause()
    limit = sql_where.param(where.limit)
    sql = (
        f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters{clause}"  # noqa: S608
        f" ORDER BY id DESC LIMIT {limit}"
    )
    return sql, sql_where.args


class PostgresAuditLog:
    """AuditLog, AuditReader and DeadLetterDesk over an asyncpg pool (made with
    taskevents.postgres.create_pool, which connects on first use): the service starts, and
    answers RETRY, while the database is away or its schema not yet migrated."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: SchemaStatus,
        *,
        acquire_timeout_seconds: float,
        partitions_ahead_months: int = 3,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._acquire_timeout_seconds = acquire_timeout_seconds
        self._partitions_ahead_months = partitions_ahead_months

    @asynccontextmanager
    async def _connection(self, timeout_seconds: float | None = None) -> AsyncIterator[Any]:
        problem = self._schema.problem()
        if problem is not None:
            raise StorageUnavailableError(problem)
        timeout = timeout_seconds or self._acquire_timeout_seconds
        with translated_db_errors(StorageUnavailableError, UnstorableError):
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
        return bool(await self.record_events([(event, delivery)]))

    async def record_events(self, batch: Sequence[tuple[TaskEvent, Delivery]]) -> set[str]:
        if not batch:
            return set()
        columns: list[list[Any]] = [[] for _ in range(11)]
        # The payloads travel as text[] and are cast in SQL: asyncpg would read a list
        # inside a jsonb[] parameter as another dimension of the array.
        for event, delivery in batch:
            values = (
                event.event_id, event.type, event.task_id, event.user_id, event.timestamp,
                json.dumps(event.payload, ensure_ascii=False), delivery.source,
                delivery.trace_id, delivery.kafka_partition, delivery.kafka_offset,
                event.schema_version,
            )  # fmt: skip
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        async with self._connection() as connection:
            try:
                async with connection.transaction():
                    await connection.execute(COMMIT_ORDER_LOCK)
                    rows = await connection.fetch(INSERT_EVENTS, *columns)
            except asyncpg.exceptions.CheckViolationError as error:
                if NO_PARTITION not in str(error):
                    raise
                # The partitions ran out (maintenance lagging): add them, then let Dapr
                # deliver the batch again.
                await connection.fetchval(ENSURE_PARTITIONS, self._partitions_ahead_months)
                raise StorageUnavailableError(
                    "no partition for this month yet; created, try again"
                ) from error
        return {row["event_id"] for row in rows}

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
                " ORDER BY occurred_at, event_id LIMIT $2",
                task_id,
                limit,
            )
        return [_stored_event(row) for row in rows]

    async def commit_seq_of(self, event_id: str, user_id: str | None) -> int | None:
        async with self._connection() as connection:
            seq: int | None = await connection.fetchval(COMMIT_SEQ_OF, event_id, user_id)
        return seq

    async def event_stats(
        self, since: datetime, until: datetime, user_id: str | None = None
    ) -> EventStats:
        async with self._connection() as connection:
            if user_id is None:
                rows = await connection.fetch(EVENT_STATS, since, until)
            else:
                rows = await connection.fetch(EVENT_STATS_OF_USER, since, until, user_id)
        by_type: dict[str, int] = {}
        by_hour: dict[datetime, int] = {}
        for row in rows:
            by_type[row["type"]] = by_type.get(row["type"], 0) + row["count"]
            by_hour[row["hour"]] = by_hour.get(row["hour"], 0) + row["count"]
        return EventStats(
            since=since,
            until=until,
            total=sum(by_type.values()),
            by_type=dict(sorted(by_type.items())),
            by_hour=[HourCount(hour=hour, count=n) for hour, n in sorted(by_hour.items())],
        )

    async def list_dead_letters(self, where: DeadLetterFilter) -> list[StoredDeadLetter]:
        sql, args = dead_letters_query(where)
        async with self._connection() as connection:
            rows = await connection.fetch(sql, *args)
        return [StoredDeadLetter.model_validate(dict(row)) for row in rows]

    async def get_dead_letter(self, letter_id: int) -> StoredDeadLetter | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id = $1",  # noqa: S608
                letter_id,
            )
        return StoredDeadLetter.model_validate(dict(row)) if row is not None else None

    async def mark_replayed(self, letter_id: int, operator: str) -> StoredDeadLetter | None:
        return await self._update_dead_letter(MARK_REPLAYED, letter_id, operator)

    async def mark_discarded(self, letter_id: int, operator: str) -> StoredDeadLetter | None:
        return await self._update_dead_letter(MARK_DISCARDED, letter_id, operator)

    async def _update_dead_letter(
        self, sql: str, letter_id: int, operator: str
    ) -> StoredDeadLetter | None:
        async with self._connection() as connection:
            row = await connection.fetchrow(sql, letter_id, operator)
        return StoredDeadLetter.model_validate(dict(row)) if row is not None else None

    async def maintain_partitions(self, retention_months: int | None) -> list[str]:
        """Create the partitions of the coming months and, with a retention, drop the
        months older than it; returns the partitions dropped. One replica at a time."""
        async with self._connection() as connection, connection.transaction():
            locked = await connection.fetchval(
                "SELECT pg_try_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY
            )
            if not locked:
                return []
            await connection.fetchval(ENSURE_PARTITIONS, self._partitions_ahead_months)
            if retention_months is None:
                return []
            # Keep the current month and the `retention_months` before it.
            cutoff = await connection.fetchval(
                "SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
                " - make_interval(months => $1)",
                retention_months,
            )
            rows = await connection.fetch(DROP_PARTITIONS, cutoff)
        return [row["dropped"] for row in rows]

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
    fields["seq"] = fields.pop("commit_seq")
    return StoredEvent.model_validate(fields)
