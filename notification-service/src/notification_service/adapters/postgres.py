"""The Ledger in Postgres (asyncpg): one row per (namespace, event, channel) — what was sent,
deferred, summarised or refused, with when. The Dapr state store keeps the claims and the
preferences; the ledger lives beside it because state.postgresql v2 has no query API and
the ledger is queried by user and time (history), counted per user and channel over a
sliding window (rate limit) and scanned by due time (deferred delivery) — see README."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from notification_service.ports import (
    Channel,
    DigestLine,
    DueItem,
    HistoryEntry,
    Kind,
    LedgerEntry,
    LedgerUnavailableError,
    Notification,
    RateLimit,
    Reservation,
    Status,
)
from taskevents.logging import get_logger
from taskevents.postgres import MigrationLedger, SchemaStatus, translated_db_errors

log = get_logger(__name__)

PACKAGE = "notification_service"
# The lock key is the one the schema was created under before there were migrations ("notif_lg"
# in ASCII, a bigint no other migrator in the database uses), so old and new replicas exclude
# each other during an upgrade.
MIGRATIONS = MigrationLedger(table="notification_schema_migrations", lock_key=0x6E6F7469665F6C67)
DIGEST_EVENT_TYPE = "notification.digest"
DONE = (Status.SENT.value, Status.DIGESTED.value)
WAITING = (Status.DEFERRED.value, Status.DIGEST_PENDING.value)
COUNTED = (Status.SENDING.value, Status.SENT.value)


class PostgresLedger:
    """Over a pool from taskevents.postgres.create_pool (jsonb read and written as Python
    values). Until `schema` says the migrations have run, every call is a
    LedgerUnavailableError, as when the database is down."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        namespace: str,
        schema: SchemaStatus,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._pool = pool
        self._namespace = namespace
        self._schema = schema
        self._timeout = timeout_seconds

    # --- Ledger --------------------------------------------------------------------------

    async def defer(self, entry: LedgerEntry, *, due_at: datetime, reason: str) -> bool:
        n = entry.notification
        async with self._connection() as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO notification_ledger AS l
                  (namespace, event_id, channel, kind, user_id, task_id, event_type, recipient,
                   title, status, reason, event, due_at)
                VALUES ($1, $2, $3, 'event', $4, $5, $6, $7, $8, 'deferred', $9, $10, $11)
                ON CONFLICT (namespace, event_id, channel) DO UPDATE
                  SET status = 'deferred', reason = EXCLUDED.reason, due_at = EXCLUDED.due_at,
                      event = EXCLUDED.event, recipient = EXCLUDED.recipient,
                      lease_until = NULL, updated_at = now()
                  WHERE l.status NOT IN ('sent', 'digested', 'deferred', 'digest_pending',
                                         'sending')
                RETURNING status
                """,
                self._namespace, n.event_id, n.channel.value, n.user_id, n.task_id,
                n.event_type, n.recipient, entry.title, reason,
                entry.event, due_at,
            )  # fmt: skip
        return row is not None

    async def reserve(
        self, entry: LedgerEntry, *, limit: RateLimit, from_deferred: bool = False
    ) -> Reservation:
        n = entry.notification
        async with self._connection() as conn, conn.transaction():
            # One reservation at a time per user and channel: count and insert atomically.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"{self._namespace}/{n.user_id}/{n.channel.value}",
            )
            existing = await conn.fetchrow(
                "SELECT status, lease_until FROM notification_ledger"
                " WHERE namespace = $1 AND event_id = $2 AND channel = $3 FOR UPDATE",
                self._namespace, n.event_id, n.channel.value,
            )  # fmt: skip
            if existing is not None:
                status = existing["status"]
                if status in DONE:
                    return Reservation.DONE
                if status == Status.DIGEST_PENDING.value or (
                    status == Status.DEFERRED.value and not from_deferred
                ):
                    return Reservation.QUEUED
                if status == Status.SENDING.value:
                    return Reservation.SEND  # counted already; the claim decides who sends
            if limit.count > 0:
                counted = await conn.fetchrow(
                    """
                    SELECT count(*) AS n, min(counted_at) AS oldest FROM notification_ledger
                    WHERE namespace = $1 AND user_id = $2 AND channel = $3
                      AND status = ANY($4::text[]) AND counted_at > now() - $5::interval
                    """,
                    self._namespace, n.user_id, n.channel.value, list(COUNTED),
                    timedelta(seconds=limit.window_seconds),
                )  # fmt: skip
                assert counted is not None
                if counted["n"] >= limit.count:
                    await self._upsert(conn, entry, Status.DIGEST_PENDING, counted=False)
                    slot_free_at = counted["oldest"] + timedelta(seconds=limit.window_seconds)
                    await self._ensure_digest(conn, n, due_at=slot_free_at)
                    return Reservation.DIGEST
            await self._upsert(conn, entry, Status.SENDING, counted=True)
            return Reservation.SEND

    async def record(
        self, notification: Notification, status: Status, *, reason: str | None = None
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                """
                UPDATE notification_ledger
                SET status = $4, reason = $5, updated_at = now(), lease_until = NULL,
                    sent_at = CASE WHEN $4 = 'sent' THEN coalesce(sent_at, now()) ELSE sent_at END,
                    counted_at = CASE WHEN $4 = 'sent' THEN coalesce(counted_at, now())
                                      ELSE counted_at END
                WHERE namespace = $1 AND event_id = $2 AND channel = $3
                  AND NOT (status = 'sent' AND $4 <> 'sent')
                """,
                self._namespace, notification.event_id, notification.channel.value,
                status.value, reason,
            )  # fmt: skip

    async def switch_off(self, entry: LedgerEntry, *, reason: str) -> None:
        n = entry.notification
        async with self._connection() as conn:
            await conn.execute(
                """
                INSERT INTO notification_ledger AS l
                  (namespace, event_id, channel, kind, user_id, task_id, event_type, recipient,
                   title, status, reason)
                VALUES ($1, $2, $3, 'event', $4, $5, $6, $7, $8, 'skipped', $9)
                ON CONFLICT (namespace, event_id, channel) DO UPDATE
                  SET status = 'skipped', reason = EXCLUDED.reason, due_at = NULL,
                      lease_until = NULL, updated_at = now()
                  WHERE l.status NOT IN ('sent', 'digested')
                """,
                self._namespace, n.event_id, n.channel.value, n.user_id, n.task_id,
                n.event_type, n.recipient, entry.title, reason,
            )  # fmt: skip

    async def retry_later(
        self, notification: Notification, *, due_at: datetime, give_up_at: datetime, reason: str
    ) -> bool:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                """
                UPDATE notification_ledger
                SET status = 'deferred', due_at = $4, give_up_at = $5, reason = $6,
                    lease_until = NULL, attempts = 0, updated_at = now()
                WHERE namespace = $1 AND event_id = $2 AND channel = $3
                  AND status IN ('sending', 'failed')
                RETURNING 1
                """,
                self._namespace, notification.event_id, notification.channel.value,
                due_at, give_up_at, reason,
            )  # fmt: skip
        return row is not None

    async def skip(self, entry: LedgerEntry, *, status: Status, reason: str) -> bool:
        n = entry.notification
        async with self._connection() as conn:
            row = await conn.fetchrow(
                """
                INSERT INTO notification_ledger
                  (namespace, event_id, channel, kind, user_id, task_id, event_type, recipient,
                   title, status, reason)
                VALUES ($1, $2, $3, 'event', $4, $5, $6, $7, $8, $9, $10)
                ON CONFLICT (namespace, event_id, channel) DO NOTHING
                RETURNING 1
                """,
                self._namespace, n.event_id, n.channel.value, n.user_id, n.task_id,
                n.event_type, n.recipient, entry.title, status.value, reason,
            )  # fmt: skip
        return row is not None

    async def take_due(self, *, limit: int, lease_seconds: float) -> list[DueItem]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                """
                UPDATE notification_ledger AS l
                SET lease_until = now() + $3::interval, attempts = l.attempts + 1,
                    status = 'deferred', updated_at = now()
                FROM (
                  SELECT event_id, channel FROM notification_ledger
                  WHERE namespace = $1 AND due_at <= now()
                    AND (
                      (status = 'deferred' AND (lease_until IS NULL OR lease_until < now()))
                      -- A deferred one whose sender died (crash, ledger error, shutdown)
                      -- after it became `sending`: stale once it has not moved for a lease.
                      OR (status = 'sending' AND updated_at < now() - $3::interval)
                    )
                  ORDER BY due_at LIMIT $2
                  FOR UPDATE SKIP LOCKED
                ) AS due
                WHERE l.namespace = $1 AND l.event_id = due.event_id AND l.channel = due.channel
                RETURNING l.*
                """,
                self._namespace, limit, timedelta(seconds=lease_seconds),
            )  # fmt: skip
        return [
            DueItem(
                kind=Kind(row["kind"]),
                notification=_notification(row),
                attempts=row["attempts"],
                event=row["event"],
                give_up_at=row["give_up_at"],
            )
            for row in rows
        ]

    async def reschedule(
        self, notification: Notification, *, due_at: datetime, reason: str
    ) -> None:
        async with self._connection() as conn:
            await conn.execute(
                """
                UPDATE notification_ledger
                SET status = 'deferred', due_at = $4, reason = $5, lease_until = NULL,
                    updated_at = now()
                WHERE namespace = $1 AND event_id = $2 AND channel = $3
                  AND status NOT IN ('sent', 'digested', 'digest_pending', 'rejected',
                                     'cancelled')
                """,
                self._namespace, notification.event_id, notification.channel.value,
                due_at, reason,
            )  # fmt: skip

    async def digest_lines(self, digest: Notification) -> list[DigestLine]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                """
                SELECT event_id, event_type, task_id, coalesce(title, '') AS title, created_at
                FROM notification_ledger
                WHERE namespace = $1 AND user_id = $2 AND channel = $3
                  AND status = 'digest_pending'
                ORDER BY created_at LIMIT 200
                """,
                self._namespace, digest.user_id, digest.channel.value,
            )  # fmt: skip
        return [
            DigestLine(
                event_id=r["event_id"],
                event_type=r["event_type"],
                task_id=r["task_id"] or "",
                title=r["title"],
                created_at=r["created_at"],
            )
            for r in rows
        ]

    async def finish_digest(
        self, digest: Notification, lines: list[DigestLine], *, limit: RateLimit
    ) -> None:
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"{self._namespace}/{digest.user_id}/{digest.channel.value}",
            )
            await conn.execute(
                """
                UPDATE notification_ledger
                SET status = 'digested', digest_id = $4, updated_at = now()
                WHERE namespace = $1 AND channel = $2 AND event_id = ANY($3::text[])
                  AND status = 'digest_pending'
                """,
                self._namespace, digest.channel.value, [line.event_id for line in lines],
                digest.event_id,
            )  # fmt: skip
            left = await conn.fetchval(
                "SELECT count(*) FROM notification_ledger WHERE namespace = $1 AND user_id = $2"
                " AND channel = $3 AND status = 'digest_pending'",
                self._namespace, digest.user_id, digest.channel.value,
            )  # fmt: skip
            if left:
                due = datetime.now(UTC) + timedelta(seconds=limit.window_seconds)
                await self._ensure_digest(conn, digest, due_at=due)

    async def history(
        self, user_id: str, *, since: datetime | None, limit: int
    ) -> list[HistoryEntry]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                """
                SELECT * FROM notification_ledger
                WHERE namespace = $1 AND user_id = $2 AND ($3::timestamptz IS NULL
                      OR updated_at >= $3)
                ORDER BY created_at, event_id, channel LIMIT $4
                """,
                self._namespace, user_id, since, limit,
            )  # fmt: skip
        return [
            HistoryEntry(
                event_id=r["event_id"],
                channel=r["channel"],
                kind=r["kind"],
                event_type=r["event_type"],
                task_id=r["task_id"],
                recipient=r["recipient"],
                status=r["status"],
                reason=r["reason"],
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                sent_at=r["sent_at"],
                due_at=r["due_at"] if r["status"] == Status.DEFERRED.value else None,
                digest_id=r["digest_id"],
            )
            for r in rows
        ]

    async def prune(self, *, older_than: timedelta) -> int:
        async with self._connection() as conn:
            result = await conn.execute(
                "DELETE FROM notification_ledger WHERE namespace = $1"
                " AND status NOT IN ('deferred', 'digest_pending', 'sending')"
                " AND updated_at < now() - $2::interval",
                self._namespace, older_than,
            )  # fmt: skip
        return int(result.split()[-1])

    # --- plumbing ------------------------------------------------------------------------

    async def _upsert(
        self, conn: Any, entry: LedgerEntry, status: Status, *, counted: bool
    ) -> None:
        n = entry.notification
        await conn.execute(
            """
            INSERT INTO notification_ledger AS l
              (namespace, event_id, channel, kind, user_id, task_id, event_type, recipient,
               title, status, event, counted_at)
            VALUES ($1, $2, $3, 'event', $4, $5, $6, $7, $8, $9, $10,
                    CASE WHEN $11 THEN now() END)
            ON CONFLICT (namespace, event_id, channel) DO UPDATE
              SET status = EXCLUDED.status, recipient = EXCLUDED.recipient, reason = NULL,
                  counted_at = EXCLUDED.counted_at, lease_until = NULL, updated_at = now(),
                  event = coalesce(EXCLUDED.event, l.event)
            """,
            self._namespace, n.event_id, n.channel.value, n.user_id, n.task_id,
            n.event_type, n.recipient, entry.title, status.value,
            entry.event, counted,
        )  # fmt: skip

    async def _ensure_digest(self, conn: Any, n: Notification, *, due_at: datetime) -> None:
        pending = await conn.fetchval(
            "SELECT 1 FROM notification_ledger WHERE namespace = $1 AND user_id = $2"
            " AND channel = $3 AND kind = 'digest' AND status IN ('deferred', 'sending')",
            self._namespace, n.user_id, n.channel.value,
        )  # fmt: skip
        if pending:
            return
        await conn.execute(
            """
            INSERT INTO notification_ledger
              (namespace, event_id, channel, kind, user_id, event_type, recipient, status,
               reason, due_at)
            VALUES ($1, $2, $3, 'digest', $4, $5, $6, 'deferred', 'rate limit', $7)
            """,
            self._namespace, f"digest-{uuid.uuid4()}", n.channel.value, n.user_id,
            DIGEST_EVENT_TYPE, n.recipient, due_at,
        )  # fmt: skip

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        problem = self._schema.problem()
        if problem is not None:
            raise LedgerUnavailableError(problem)
        with translated_db_errors(LedgerUnavailableError):
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn


def _notification(row: Any) -> Notification:
    return Notification(
        event_id=row["event_id"],
        channel=Channel(row["channel"]),
        event_type=row["event_type"],
        user_id=row["user_id"],
        task_id=row["task_id"] or "",
        recipient=row["recipient"],
    )
