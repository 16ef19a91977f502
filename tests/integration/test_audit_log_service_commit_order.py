"""The audit log's commit order (migration 0006) on the real Postgres: a reader that follows
GET /audit/events by `after_seq` never skips a row committed later and never reads one
twice — two audit replicas (two pools) writing batches at once, events of many tasks,
back-dated ones among them; and a batch waits for the one numbered before it to end."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from audit_log_service.adapters.postgres import AUDIT_MIGRATIONS, PostgresAuditLog
from audit_log_service.ports import Delivery, EventFilter
from taskevents.events import TaskEvent
from taskevents.postgres import (
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    load_migrations,
    migrate,
    packaged_migrations,
)
from tests.support.stack import Stack, scratch_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

COMMIT_ORDER_MIGRATION = 6  # 0006_commit_order.sql
WAITING_FOR_THE_COMMIT_ORDER_LOCK = """
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND NOT granted AND database = (
       SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest_asyncio.fixture
async def database(stack: Stack) -> AsyncIterator[str]:
    async with scratch_database(stack, "audit_commit_order") as dsn:
        await migrate(
            dsn, packaged_migrations("audit_log_service"), AUDIT_MIGRATIONS,
            connect_timeout_seconds=5,
        )  # fmt: skip
        yield dsn


async def _replica(dsn: str) -> tuple[asyncpg.Pool, PostgresAuditLog]:
    pool = await create_pool(dsn, PoolSettings(max_size=3))
    return pool, PostgresAuditLog(pool, SchemaStatus(migrated=True), acquire_timeout_seconds=10)


def _event(user: str, task: int, n: int, *, back_dated: bool = False) -> TaskEvent:
    when = datetime.now(UTC) - (timedelta(days=40) if back_dated else timedelta())
    return TaskEvent.create(
        "task.updated", task_id=f"task-{task}", user_id=user, timestamp=when, payload={"n": n}
    )


async def test_a_reader_following_the_commit_order_gets_every_row_once_from_two_writers(
    database: str,
) -> None:
    rng = random.Random(14)
    pools = []
    try:
        replicas = []
        for _ in range(2):
            pool, log = await _replica(database)
            pools.append(pool)
            replicas.append(log)
        reader = replicas[0]
        # 2 writers x 40 batches of 1-25 events over 30 tasks; every seventh back-dated.
        batches = [
            [
                _event("u", rng.randrange(30), n, back_dated=n % 7 == 0)
                for n in range(rng.randint(1, 25))
            ]
            for _ in range(80)
        ]
        written: list[str] = []
        done = asyncio.Event()

        async def write(log: PostgresAuditLog, mine: list[list[TaskEvent]]) -> None:
            for batch in mine:
                stored = await log.record_events([(e, Delivery()) for e in batch])
                written.extend(stored)

        read: list[str] = []
        seqs: list[int] = []

        async def follow() -> None:
            position = 0
            while True:
                finished = done.is_set()
                page = await reader.list_events(EventFilter(after_seq=position, limit=17))
                read.extend(row.event_id for row in page)
                seqs.extend(row.seq for row in page)
                if page:
                    position = page[-1].seq
                elif finished:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.gather(write(replicas[0], batches[0::2]), write(replicas[1], batches[1::2]))
        done.set()
        await asyncio.wait_for(follower, 60)
    finally:
        for pool in pools:
            await close_pool(pool)

    assert len(written) == sum(len(b) for b in batches)
    assert sorted(read) == sorted(written)  # each once, none missing
    assert seqs == sorted(set(seqs))  # strictly increasing


async def test_a_batch_is_numbered_only_after_the_one_before_has_ended(database: str) -> None:
    pool, log = await _replica(database)
    first = _event("u", 1, 1)
    second = _event("u", 2, 2)
    holder = await asyncpg.connect(database)
    try:
        # Another writer's transaction takes a number and stays open.
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            first.event_id, first.type, first.task_id, first.user_id, first.timestamp,
        )  # fmt: skip
        writing = asyncio.create_task(log.record_events([(second, Delivery())]))

        async def waits() -> bool:
            return bool(await holder.fetchval(WAITING_FOR_THE_COMMIT_ORDER_LOCK))

        await eventually(waits, timeout=10, what="the batch waiting for the numbering lock")
        assert not writing.done()
        # Nothing numbered after the open transaction is visible before it ends.
        assert await log.list_events(EventFilter(after_seq=0, limit=10)) == []

        await transaction.commit()
        assert await asyncio.wait_for(writing, 10) == {second.event_id}
        rows = await log.list_events(EventFilter(after_seq=0, limit=10))
        assert [row.event_id for row in rows] == [first.event_id, second.event_id]
        assert rows[0].seq < rows[1].seq
        assert await log.commit_seq_of(second.event_id, "u") == rows[1].seq
        assert await log.commit_seq_of(second.event_id, "someone-else") is None
    finally:
        await holder.close()
        await close_pool(pool)


async def test_rows_stored_before_the_migration_are_numbered_in_the_order_received(
    stack: Stack,
) -> None:
    migrations = load_migrations(packaged_migrations("audit_log_service"))
    before = [m for m in migrations if m.version < COMMIT_ORDER_MIGRATION]
    async with scratch_database(stack, "audit_commit_order_upgrade") as dsn:
        connection = await asyncpg.connect(dsn)
        try:
            for migration in before:
                await connection.execute(migration.sql)
            # Stored by an older release: received in the order old, middle, new.
            for n, event_id in enumerate(["old", "middle", "new"]):
                received = datetime.now(UTC) + timedelta(seconds=n)
                await connection.execute(
                    "INSERT INTO audit_event_ids (event_id, received_at) VALUES ($1, $2)",
                    event_id, received,
                )  # fmt: skip
                await connection.execute(
                    "INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at,"
                    " received_at) VALUES ($1, 'task.created', 't', 'u', $2, $3)",
                    event_id, received - timedelta(days=n), received,
                )  # fmt: skip
            for migration in migrations:
                if migration.version >= COMMIT_ORDER_MIGRATION:
                    await connection.execute(migration.sql)
            numbered = await connection.fetch(
                "SELECT e.event_id, e.commit_seq, i.commit_seq AS id_seq FROM audit_events e"
                " JOIN audit_event_ids i USING (event_id) ORDER BY e.commit_seq"
            )
            later = await connection.fetchval(
                "INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at)"
                " VALUES ('later', 'task.created', 't', 'u', now()) RETURNING commit_seq"
            )
        finally:
            await connection.close()
    assert [(r["event_id"], r["commit_seq"], r["id_seq"]) for r in numbered] == [
        ("old", 1, 1), ("middle", 2, 2), ("new", 3, 3),
    ]  # fmt: skip
    assert later == 4
