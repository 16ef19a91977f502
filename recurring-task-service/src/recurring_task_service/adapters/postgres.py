"""The schedules in Postgres (asyncpg)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from recurring_task_service.ports import (
    FailedAttempt,
    MissedRecord,
    OutboxEntry,
    OutboxLease,
    ParkedEvent,
    PlannedEvent,
    ScheduleExistsError,
    ScheduleUpdate,
    StoreRefusedError,
    StoreUnavailableError,
    TaskChange,
)
from recurring_task_service.schedules import (
    AfterCompletionRule,
    CronRule,
    IntervalRule,
    InvalidScheduleError,
    MissedReason,
    MissedRun,
    NewSchedule,
    Rule,
    Schedule,
    ScheduleOptions,
    reconcile,
    rule_from_fields,
)
from taskevents.events import TaskEvent
from taskevents.logging import get_logger
from taskevents.postgres import MigrationLedger, SchemaStatus, translated_db_errors

# The ledger this service has always kept, so existing databases upgrade in place. The lock
# key: any fixed 64-bit number no other user of the database takes for its lock — the first
# 8 bytes of sha256("recurring-task-service/migrations").
MIGRATION_LEDGER = MigrationLedger(
    table="recurring_schema_migrations", lock_key=2066258197461214137
)

log = get_logger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def _translating_outages(
    method: Callable[Concatenate[PostgresSchedules, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[PostgresSchedules, P], Coroutine[Any, Any, T]]:
    async def wrapper(self: PostgresSchedules, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self._outages_translated():
            return await method(self, *args, **kwargs)

    return wrapper


_INSERT_SCHEDULE = """INSERT INTO recurring_schedules (task_id, user_id, cron,
        interval_seconds, after_completion_seconds, timezone, payload, next_fire_at,
        starts_at, ends_at, max_count, coalesce_missed, paused, active, traceparent)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"""
_INSERT_SCHEDULE_UNLESS_THE_TASK_HAS_ONE = (
    _INSERT_SCHEDULE
    + """
    ON CONFLICT (task_id) DO NOTHING
    RETURNING *"""
)


class PostgresSchedules:
    """ScheduleStore, TaskSchedules, DueSchedules and Outbox over one pool. Until `schema`
    says the migrations have run, every call is StoreUnavailableError."""

    def __init__(self, pool: asyncpg.Pool, schema: SchemaStatus) -> None:
        self._pool = pool
        self._schema = schema

    @contextmanager
    def _outages_translated(self) -> Iterator[None]:
        problem = self._schema.problem()
        if problem is not None:
            raise StoreUnavailableError(problem)
        with translated_db_errors(StoreUnavailableError, StoreRefusedError):
            yield

    # --- the HTTP API

    @_translating_outages
    async def create(self, new: NewSchedule) -> Schedule:
        async with self._pool.acquire() as connection:
            row = await connection.fetchrow(
                _INSERT_SCHEDULE_UNLESS_THE_TASK_HAS_ONE,
                *_new_values(new, next_fire_at=new.next_fire_at, active=_starts_active(new)),
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
    async def update(
        self,
        schedule_id: uuid.UUID,
        edit: Callable[[Schedule], ScheduleUpdate],
        *,
        cause: str | None = None,
    ) -> Schedule | None:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT * FROM recurring_schedules WHERE id = $1 FOR UPDATE", schedule_id
            )
            if row is None:
                return None
            change = edit(_schedule(row))
            rule = _rule_columns(change.rule)
            updated = await connection.fetchrow(
                """UPDATE recurring_schedules SET
                       cron = $2, interval_seconds = $3, after_completion_seconds = $4,
                       timezone = $5, payload = $6, next_fire_at = $7, starts_at = $8,
                       ends_at = $9, max_count = $10, coalesce_missed = $11, paused = $12,
                       active = $13, broken_reason = NULL, broken_at = NULL,
                       traceparent = $14, updated_at = now()
                   WHERE id = $1
                   RETURNING *""",
                schedule_id,
                *rule,
                change.payload,
                change.next_fire_at,
                *_option_columns(change.options),
                change.paused,
                change.active,
                cause,
            )
        return _schedule(updated)

    @_translating_outages
    async def enqueue(
        self,
        schedule_id: uuid.UUID,
        make_event: Callable[[Schedule], TaskEvent],
        *,
        cause: str | None = None,
    ) -> TaskEvent | None:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT * FROM recurring_schedules WHERE id = $1 FOR SHARE", schedule_id
            )
            if row is None:
                return None
            event = make_event(_schedule(row))
            await connection.execute(
                """INSERT INTO recurring_outbox
                          (event_id, schedule_id, task_id, event, due_at, traceparent)
                   SELECT $1, $2, $3, $4, $5, $6
                    WHERE NOT EXISTS (SELECT 1 FROM recurring_outbox WHERE event_id = $1)""",
                *_outbox_values(schedule_id, PlannedEvent(event, event.timestamp, cause)),
            )
        return event

    @_translating_outages
    async def missed(self, schedule_id: uuid.UUID, *, limit: int) -> list[MissedRecord]:
        rows = await self._pool.fetch(
            """SELECT * FROM recurring_missed_occurrences WHERE schedule_id = $1
                ORDER BY first_occurrence DESC, id DESC LIMIT $2""",
            schedule_id,
            limit,
        )
        return [
            MissedRecord(
                schedule_id=row["schedule_id"],
                task_id=row["task_id"],
                run=MissedRun(
                    MissedReason(row["reason"]),
                    row["first_occurrence"],
                    row["last_occurrence"],
                    row["occurrences"],
                ),
                recorded_at=row["recorded_at"],
            )
            for row in rows
        ]

    # --- task events

    @_translating_outages
    async def put_for_task(self, new: NewSchedule, *, event_at: datetime) -> TaskChange:
        async with self._pool.acquire() as connection, connection.transaction():
            if not await _newest_task_event(connection, new.task_id, event_at, deleted=False):
                return TaskChange.STALE
            row = await connection.fetchrow(
                "SELECT * FROM recurring_schedules WHERE task_id = $1 FOR UPDATE", new.task_id
            )
            if row is None:
                await connection.execute(
                    _INSERT_SCHEDULE,
                    *_new_values(new, next_fire_at=new.next_fire_at, active=_starts_active(new)),
                )
                return TaskChange.APPLIED
            next_fire_at, active = reconcile(_schedule(row), new)
            await connection.execute(
                """UPDATE recurring_schedules SET
                       user_id = $2, cron = $3, interval_seconds = $4,
                       after_completion_seconds = $5, timezone = $6, payload = $7,
                       next_fire_at = $8, starts_at = $9, ends_at = $10, max_count = $11,
                       coalesce_missed = $12, active = $13, broken_reason = NULL,
                       broken_at = NULL, traceparent = $14, updated_at = now()
                   WHERE id = $1""",
                row["id"],
                new.user_id,
                *_rule_columns(new.rule),
                dict(new.payload),
                next_fire_at,
                *_option_columns(new.options),
                active,
                new.cause,
            )
            return TaskChange.APPLIED

    @_translating_outages
    async def delete_for_task(self, task_id: str, *, event_at: datetime) -> TaskChange:
        async with self._pool.acquire() as connection, connection.transaction():
            if not await _newest_task_event(connection, task_id, event_at, deleted=True):
                return TaskChange.STALE
            deleted = await connection.fetchval(
                "DELETE FROM recurring_schedules WHERE task_id = $1 RETURNING id", task_id
            )
        return TaskChange.APPLIED if deleted is not None else TaskChange.NOTHING

    @_translating_outages
    async def complete_task(
        self,
        task_id: str,
        *,
        completed_at: datetime,
        plan: Callable[[Schedule], datetime | None],
        cause: str | None = None,
    ) -> TaskChange:
        async with self._pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                """SELECT * FROM recurring_schedules
                    WHERE task_id = $1 AND after_completion_seconds IS NOT NULL
                    FOR UPDATE""",
                task_id,
            )
            if row is None or not row["active"]:
                return TaskChange.NOTHING
            last = row["last_completed_at"]
            if last is not None and completed_at <= last:
                return TaskChange.STALE
            next_fire_at = plan(_schedule(row))
            await connection.execute(
                """UPDATE recurring_schedules SET next_fire_at = $2::timestamptz,
                       last_completed_at = $3, active = $2::timestamptz IS NOT NULL,
                       traceparent = $4, updated_at = now()
                   WHERE id = $1""",
                row["id"],
                next_fire_at,
                completed_at,
                cause,
            )
        return TaskChange.APPLIED

    # --- firing

    @_translating_outages
    async def next_fire_at(self) -> datetime | None:
        earliest: datetime | None = await self._pool.fetchval(
            """SELECT min(next_fire_at) FROM recurring_schedules
                WHERE active AND NOT paused AND broken_reason IS NULL"""
        )
        return earliest

    @asynccontextmanager
    async def claim_due(self, *, limit: int) -> AsyncIterator[_Claimed]:
        with self._outages_translated():
            async with self._pool.acquire() as connection, connection.transaction():
                rows = await connection.fetch(
                    """SELECT *, now() AS claimed_at FROM recurring_schedules
                        WHERE active AND NOT paused AND broken_reason IS NULL
                          AND next_fire_at <= now()
                        ORDER BY next_fire_at
                        LIMIT $1
                        FOR UPDATE SKIP LOCKED""",
                    limit,
                )
                now = rows[0]["claimed_at"] if rows else datetime.now(UTC)
                readable, broken = _readable_schedules(rows)
                claimed = _Claimed(now, readable, broken=broken)
                yield claimed
                if claimed.broken:
                    await connection.executemany(
                        """UPDATE recurring_schedules SET broken_reason = $2,
                               broken_at = now(), updated_at = now()
                           WHERE id = $1""",
                        claimed.broken,
                    )
                if claimed.outbox:
                    await connection.executemany(
                        """INSERT INTO recurring_outbox
                               (event_id, schedule_id, task_id, event, due_at, traceparent)
                           VALUES ($1, $2, $3, $4, $5, $6)""",
                        claimed.outbox,
                    )
                if claimed.missed:
                    await connection.executemany(
                        """INSERT INTO recurring_missed_occurrences (schedule_id, task_id,
                               reason, first_occurrence, last_occurrence, occurrences)
                           VALUES ($1, $2, $3, $4, $5, $6)""",
                        claimed.missed,
                    )
                if claimed.advances:
                    await connection.executemany(
                        """UPDATE recurring_schedules SET
                               next_fire_at = $2,
                               active = $3,
                               last_fired_at = CASE WHEN $4 > 0 THEN $5 ELSE last_fired_at END,
                               fire_count = fire_count + $4,
                               updated_at = now()
                           WHERE id = $1""",
                        claimed.advances,
                    )

    @_translating_outages
    async def lease(self, *, limit: int, lease_seconds: float) -> _Lease:
        token = uuid.uuid4()
        rows = await self._pool.fetch(
            """WITH waiting AS (
                   SELECT o.id FROM recurring_outbox o
                    WHERE o.parked_at IS NULL
                      AND o.next_attempt_at <= now()
                      AND (o.leased_until IS NULL OR o.leased_until < now())
                      AND NOT EXISTS (
                          SELECT 1 FROM recurring_outbox earlier
                           WHERE earlier.task_id = o.task_id AND earlier.id < o.id
                             AND earlier.parked_at IS NULL
                             AND (earlier.next_attempt_at > now()
                                  OR earlier.leased_until >= now()))
                    ORDER BY o.id
                    LIMIT $1
                    FOR UPDATE OF o SKIP LOCKED)
               UPDATE recurring_outbox o
                  SET leased_until = now() + make_interval(secs => $2), lease_token = $3
                 FROM waiting
                WHERE o.id = waiting.id
            RETURNING o.id, o.event, o.due_at, o.task_id, o.attempts, o.traceparent""",
            limit,
            lease_seconds,
            token,
        )
        return _Lease(token, [_outbox_entry(row) for row in sorted(rows, key=lambda r: r["id"])])

    @_translating_outages
    async def settle(
        self,
        lease: OutboxLease,
        *,
        published: Sequence[int],
        failed: Sequence[FailedAttempt],
        released: Sequence[int],
    ) -> None:
        assert isinstance(lease, _Lease)
        async with self._pool.acquire() as connection, connection.transaction():
            if published:
                await connection.execute(
                    "DELETE FROM recurring_outbox WHERE id = ANY($1::bigint[])", list(published)
                )
            if failed:
                await connection.executemany(
                    """UPDATE recurring_outbox SET
                           attempts = attempts + 1,
                           last_error = $2,
                           next_attempt_at = coalesce($3, next_attempt_at),
                           parked_at = CASE WHEN $3::timestamptz IS NULL THEN now() END,
                           park_reason = CASE WHEN $3::timestamptz IS NULL THEN $2 END,
                           leased_until = NULL, lease_token = NULL
                       WHERE id = $1 AND lease_token = $4""",
                    [(f.entry_id, f.error, f.retry_at, lease.token) for f in failed],
                )
            if released:
                await connection.execute(
                    """UPDATE recurring_outbox SET leased_until = NULL, lease_token = NULL
                        WHERE id = ANY($1::bigint[]) AND lease_token = $2""",
                    list(released),
                    lease.token,
                )

    @_translating_outages
    async def parked(self, *, limit: int) -> list[ParkedEvent]:
        rows = await self._pool.fetch(
            """SELECT id, event_id, schedule_id, task_id, due_at, attempts, park_reason,
                      parked_at
                 FROM recurring_outbox WHERE parked_at IS NOT NULL
                ORDER BY id LIMIT $1""",
            limit,
        )
        return [
            ParkedEvent(
                id=row["id"],
                event_id=row["event_id"],
                schedule_id=row["schedule_id"],
                task_id=row["task_id"],
                due_at=row["due_at"],
                attempts=row["attempts"],
                reason=row["park_reason"],
                parked_at=row["parked_at"],
            )
            for row in rows
        ]

    @_translating_outages
    async def requeue(self, entry_id: int) -> bool:
        requeued = await self._pool.fetchval(
            """UPDATE recurring_outbox SET parked_at = NULL, park_reason = NULL, attempts = 0,
                      next_attempt_at = now(), leased_until = NULL, lease_token = NULL
                WHERE id = $1 AND parked_at IS NOT NULL
            RETURNING id""",
            entry_id,
        )
        return requeued is not None


def _outbox_entry(row: asyncpg.Record) -> OutboxEntry:
    common = {
        "id": row["id"],
        "due_at": row["due_at"],
        "task_id": row["task_id"],
        "cause": row["traceparent"],
    }
    try:
        event = TaskEvent.model_validate_json(row["event"])
    except ValueError as error:
        return OutboxEntry(event=None, attempts=row["attempts"], unreadable=str(error), **common)
    return OutboxEntry(event=event, attempts=row["attempts"], **common)


def _readable_schedules(
    rows: Sequence[asyncpg.Record],
) -> tuple[list[Schedule], list[tuple[uuid.UUID, str]]]:
    """The claimed rows as schedules, and those that cannot be read any more (a time zone
    that left the tz database, say) with the reason: marked broken, never claimed again,
    so one of them cannot stop the others from firing."""
    readable: list[Schedule] = []
    broken: list[tuple[uuid.UUID, str]] = []
    for row in rows:
        try:
            readable.append(_schedule(row, strict=True))
        except InvalidScheduleError as error:
            broken.append((row["id"], str(error)))
            log.error(
                "schedule is broken: it cannot be read and will not fire",
                schedule_id=str(row["id"]),
                task_id=row["task_id"],
                reason=str(error),
            )
    return readable, broken


async def _newest_task_event(
    connection: asyncpg.Connection, task_id: str, event_at: datetime, *, deleted: bool
) -> bool:
    """Record the task's event as its newest (compare-and-set on its time); False when a
    newer one — or, for a change, a deletion at the same time — was applied already."""
    applied = await connection.fetchval(
        """INSERT INTO recurring_task_versions AS v (task_id, last_event_at, deleted)
                VALUES ($1, $2, $3)
           ON CONFLICT (task_id) DO UPDATE SET
                last_event_at = EXCLUDED.last_event_at,
                deleted = EXCLUDED.deleted,
                updated_at = now()
            WHERE v.last_event_at < EXCLUDED.last_event_at
               OR (v.last_event_at = EXCLUDED.last_event_at AND (EXCLUDED.deleted OR NOT v.deleted))
           RETURNING true""",
        task_id,
        event_at,
        deleted,
    )
    return bool(applied)


@dataclass(slots=True)
class _Claimed:
    now: datetime
    schedules: Sequence[Schedule]
    broken: list[tuple[uuid.UUID, str]] = field(default_factory=list)
    outbox: list[tuple[Any, ...]] = field(default_factory=list)
    missed: list[tuple[Any, ...]] = field(default_factory=list)
    advances: list[tuple[Any, ...]] = field(default_factory=list)

    @property
    def broken_count(self) -> int:
        return len(self.broken)

    def settle(
        self,
        schedule: Schedule,
        *,
        events: Sequence[PlannedEvent],
        missed: Sequence[MissedRun],
        next_fire_at: datetime | None,
        finished: bool,
    ) -> None:
        self.outbox.extend(_outbox_values(schedule.id, planned) for planned in events)
        self.missed.extend(
            (schedule.id, schedule.task_id, run.reason.value, run.first, run.last, run.count)
            for run in missed
        )
        self.advances.append((schedule.id, next_fire_at, not finished, len(events), self.now))


@dataclass(frozen=True, slots=True)
class _Lease:
    token: uuid.UUID
    entries: Sequence[OutboxEntry]


def _outbox_values(schedule_id: uuid.UUID, planned: PlannedEvent) -> tuple[Any, ...]:
    event = planned.event
    return (
        event.event_id,
        schedule_id,
        event.task_id,
        event.to_json(),
        planned.due_at,
        planned.cause,
    )


def _starts_active(new: NewSchedule) -> bool:
    return new.next_fire_at is not None or isinstance(new.rule, AfterCompletionRule)


def _rule_columns(rule: Rule) -> tuple[Any, ...]:
    return (
        rule.expression if isinstance(rule, CronRule) else None,
        rule.seconds if isinstance(rule, IntervalRule) else None,
        rule.seconds if isinstance(rule, AfterCompletionRule) else None,
        rule.timezone,
    )


def _option_columns(options: ScheduleOptions) -> tuple[Any, ...]:
    return (options.starts_at, options.ends_at, options.max_count, options.coalesce_missed)


def _new_values(
    new: NewSchedule, *, next_fire_at: datetime | None, active: bool
) -> tuple[Any, ...]:
    cron, interval, after_completion, timezone = _rule_columns(new.rule)
    return (
        new.task_id,
        new.user_id,
        cron,
        interval,
        after_completion,
        timezone,
        dict(new.payload),
        next_fire_at,
        *_option_columns(new.options),
        new.paused,
        active,
        new.cause,
    )


def _rule(row: asyncpg.Record, timezone: str) -> Rule:
    after_completion = row["after_completion_seconds"]
    if after_completion is not None:
        return AfterCompletionRule(after_completion, timezone)
    return rule_from_fields(
        cron=row["cron"], interval_seconds=row["interval_seconds"], timezone=timezone
    )


def _schedule(row: asyncpg.Record, *, strict: bool = False) -> Schedule:
    """The row as a schedule. Not strict (the API's reads): a row that can no longer be
    read — its time zone left the tz database — is shown with its rule in UTC, its stored
    time zone, and why it is broken."""
    broken: str | None = row["broken_reason"]
    try:
        rule = _rule(row, row["timezone"])
    except InvalidScheduleError as error:
        if strict:
            raise
        broken = broken or str(error)
        rule = dataclasses.replace(_rule(row, "UTC"), timezone=row["timezone"])
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
        options=ScheduleOptions(
            starts_at=row["starts_at"],
            ends_at=row["ends_at"],
            max_count=row["max_count"],
            coalesce_missed=row["coalesce_missed"],
        ),
        paused=row["paused"],
        last_completed_at=row["last_completed_at"],
        broken=broken,
        cause=row["traceparent"],
    )
