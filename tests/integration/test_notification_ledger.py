"""notification-service's ledger schema under the library's migrator, on the real Postgres:
a database the service made before it had migrations upgrades in place and its rows read as
before; the service migrates at start; with its database down it starts anyway, unready and
with the ledger unavailable. Each test has a scratch database of its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from notification_service.adapters.postgres import MIGRATIONS, PACKAGE, PostgresLedger
from notification_service.app import create_app
from notification_service.ports import (
    Channel,
    DueItem,
    LedgerEntry,
    Notification,
    RateLimit,
    Reservation,
    Status,
)
from notification_service.settings import Settings
from taskevents.events import TaskEvent
from taskevents.postgres import (
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    migrate,
    packaged_migrations,
)
from tests.support.authorization import bearer
from tests.support.stack import Stack, free_port, scratch_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

NAMESPACE = "notify-ledger-it"
# The schema the service applied at every start before it had migrations (schema.sql): the
# statements of 0001, in one transaction under the same advisory lock.
BEFORE_MIGRATIONS = (packaged_migrations(PACKAGE) / "0001_notification_ledger.sql").read_text()


def an_event() -> TaskEvent:
    return TaskEvent.create(
        "task.created", task_id="task-42", user_id="user-7",
        payload={"title": "Pay rent", "user_email": "ada@example.com"},
    )  # fmt: skip


async def made_before_migrations(dsn: str, event: TaskEvent) -> None:
    """What an older release left: its schema, and a deferred row whose event it wrote as
    JSON text (it had no jsonb codec)."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATIONS.lock_key)
            await connection.execute(BEFORE_MIGRATIONS)
        await connection.execute(
            """
            INSERT INTO notification_ledger
              (namespace, event_id, channel, kind, user_id, task_id, event_type, recipient,
               title, status, reason, event, due_at)
            VALUES ($1, $2, 'email', 'event', $3, $4, $5, 'ada@example.com', 'Pay rent',
                    'deferred', 'quiet hours', $6, now() - interval '1 minute')
            """,
            NAMESPACE, event.event_id, event.user_id, event.task_id, event.type,
            json.dumps(event.model_dump(mode="json")),
        )  # fmt: skip
    finally:
        await connection.close()


async def test_a_database_made_before_migrations_upgrades_in_place_and_reads_as_before(
    stack: Stack,
) -> None:
    old, new = an_event(), an_event()
    async with scratch_database(stack, "notify_ledger") as dsn:
        await made_before_migrations(dsn, old)

        applied = await migrate(
            dsn, packaged_migrations(PACKAGE), MIGRATIONS, connect_timeout_seconds=5
        )
        again = await migrate(
            dsn, packaged_migrations(PACKAGE), MIGRATIONS, connect_timeout_seconds=5
        )

        assert [m.filename for m in applied] == [
            "0001_notification_ledger.sql",
            "0002_retry_deadline.sql",
        ]
        assert again == []
        pool = await create_pool(dsn, PoolSettings())
        try:
            ledger = PostgresLedger(pool, namespace=NAMESPACE, schema=SchemaStatus(migrated=True))
            [due] = await ledger.take_due(limit=10, lease_seconds=60)
            assert due.event == old.model_dump(mode="json")
            assert TaskEvent.model_validate(due.event) == old

            notification = Notification(
                new.event_id, Channel.EMAIL, new.type, new.user_id, new.task_id, "a@b.example"
            )
            stored = await ledger.defer(
                LedgerEntry(notification, "Pay rent", new.model_dump(mode="json")),
                due_at=datetime.now(UTC) + timedelta(hours=1),
                reason="quiet hours",
            )
            assert stored
            # Written as a JSON object (a Python value through the codec), not a JSON string.
            kinds = await pool.fetch(
                "SELECT event_id, jsonb_typeof(event) AS kind, event->>'task_id' AS task_id"
                " FROM notification_ledger WHERE namespace = $1 ORDER BY event_id",
                NAMESPACE,
            )
            assert {(r["event_id"], r["kind"], r["task_id"]) for r in kinds} == {
                (old.event_id, "object", "task-42"),
                (new.event_id, "object", "task-42"),
            }
            recorded = await pool.fetch(
                f"SELECT version, name, checksum FROM {MIGRATIONS.table}"  # noqa: S608
            )
            assert [(r["version"], r["name"]) for r in recorded] == [
                (1, "notification_ledger"),
                (2, "retry_deadline"),
            ]
            assert [r["checksum"] for r in recorded] == [m.checksum for m in applied]
        finally:
            await close_pool(pool)


@contextmanager
def running(database_url: str) -> Iterator[TestClient]:
    """The service in this process on the real bootstrap; no sidecar and no SMTP server
    answer on the ports it is given."""
    settings = Settings(
        database_url=database_url,
        dapr_http_port=free_port(),
        smtp_port=free_port(),
        secret_store="",
    )
    # As user-7, whose history the tests read.
    with TestClient(create_app(settings), headers=bearer("user-7")) as client:
        yield client


async def failing(client: TestClient) -> dict[str, Any]:
    response = await asyncio.to_thread(client.get, "/ready")
    assert response.status_code == 503  # the sidecar at least never answers
    body: dict[str, Any] = response.json()["failing"]
    return body


async def test_the_service_migrates_its_database_at_start(stack: Stack) -> None:
    async with scratch_database(stack, "notify_ledger") as dsn:
        with running(dsn) as client:

            async def database_ready() -> bool:
                return "database" not in await failing(client)

            await eventually(database_ready, what="the database migrated and answering")
            history = await asyncio.to_thread(
                client.get, "/notifications", params={"user_id": "user-7"}
            )
        assert history.status_code == 200
        assert history.json()["items"] == []
        connection = await asyncpg.connect(dsn)
        try:
            versions = await connection.fetch(f"SELECT version FROM {MIGRATIONS.table}")  # noqa: S608
        finally:
            await connection.close()
        assert sorted(r["version"] for r in versions) == [1, 2]


async def test_with_its_database_down_the_service_runs_unready_and_the_ledger_unavailable() -> None:
    unreachable = f"postgresql://taskevents:taskevents@127.0.0.1:{free_port()}/taskevents"
    with running(unreachable) as client:

        async def waiting_for_the_database() -> str | None:
            problem = (await failing(client)).get("database", "")
            return problem if "database unavailable" in problem else None

        problem = await eventually(waiting_for_the_database, what="readiness naming the database")
        history = await asyncio.to_thread(
            client.get, "/notifications", params={"user_id": "user-7"}
        )
        health = await asyncio.to_thread(client.get, "/health")

    assert problem.startswith("the schema is not migrated yet: database unavailable: ")
    assert history.status_code == 503
    assert history.json()["detail"].startswith(
        "ledger unavailable: the schema is not migrated yet: database unavailable: "
    )
    assert health.json() == {"service": "notification-service", "status": "healthy"}


async def test_a_deferred_notification_whose_sender_died_mid_send_is_taken_again(
    stack: Stack,
) -> None:
    """Sending a deferred notification flips its row to `sending`; a crash, a ledger error
    or a shutdown before `sent` is recorded must not strand it there: once its lease has run
    out it is due again (the claim in the state store still keeps it from going out twice)."""
    event = an_event()
    async with scratch_database(stack, "notify_stranded") as dsn:
        await migrate(dsn, packaged_migrations(PACKAGE), MIGRATIONS, connect_timeout_seconds=5)
        pool = await create_pool(dsn, PoolSettings())
        try:
            ledger = PostgresLedger(pool, namespace=NAMESPACE, schema=SchemaStatus(migrated=True))
            notification = Notification(
                event.event_id, Channel.EMAIL, event.type, event.user_id, event.task_id,
                "ada@example.com",
            )  # fmt: skip
            entry = LedgerEntry(notification, "Pay rent", event.model_dump(mode="json"))
            assert await ledger.defer(
                entry, due_at=datetime.now(UTC) - timedelta(seconds=1), reason="quiet hours"
            )
            [due] = await ledger.take_due(limit=10, lease_seconds=1)
            # The sender reserves it (status `sending`) and dies before recording the send.
            reserved = await ledger.reserve(
                entry, limit=RateLimit(count=0, window_seconds=60), from_deferred=True
            )
            assert reserved is Reservation.SEND

            async def taken_again() -> list[DueItem]:
                return await ledger.take_due(limit=10, lease_seconds=1)

            [again] = await eventually(taken_again, timeout=15, what="the stranded row due again")
            assert again.notification.event_id == event.event_id
            assert again.attempts == due.attempts + 1
            # Leased again: not handed out twice at once.
            assert await ledger.take_due(limit=10, lease_seconds=60) == []
            await ledger.record(notification, Status.SENT)
            row = await pool.fetchrow(
                "SELECT status FROM notification_ledger WHERE event_id = $1", event.event_id
            )
            assert row is not None
            assert row["status"] == "sent"
        finally:
            await close_pool(pool)


async def test_a_kept_notification_carries_its_deadline_and_a_too_old_one_is_recorded_once(
    stack: Stack,
) -> None:
    """On the real schema (0002): a send that failed is kept with `give_up_at`, which the
    relay's lease hands back and retries do not move; a row already sent is not kept; a
    too-old event is recorded once and leaves an existing row alone."""
    event, old, sent = an_event(), an_event(), an_event()
    async with scratch_database(stack, "notify_kept") as dsn:
        await migrate(dsn, packaged_migrations(PACKAGE), MIGRATIONS, connect_timeout_seconds=5)
        pool = await create_pool(dsn, PoolSettings())
        try:
            ledger = PostgresLedger(pool, namespace=NAMESPACE, schema=SchemaStatus(migrated=True))
            no_limit = RateLimit(count=0, window_seconds=60)

            def entry_of(e: TaskEvent) -> LedgerEntry:
                n = Notification(
                    e.event_id, Channel.EMAIL, e.type, e.user_id, e.task_id, "ada@example.com"
                )
                return LedgerEntry(n, "Pay rent", e.model_dump(mode="json"))

            kept, done = entry_of(event), entry_of(sent)
            now = datetime.now(UTC).replace(microsecond=0)
            give_up_at = now + timedelta(minutes=5)
            for entry in (kept, done):
                assert await ledger.reserve(entry, limit=no_limit) is Reservation.SEND
            await ledger.record(done.notification, Status.SENT)
            assert await ledger.retry_later(
                kept.notification, due_at=now - timedelta(seconds=1), give_up_at=give_up_at,
                reason="SMTP: Connection refused",
            )  # fmt: skip
            assert not await ledger.retry_later(
                done.notification, due_at=now, give_up_at=give_up_at, reason="late"
            )
            # A redelivery while kept: queued, not sent again.
            assert await ledger.reserve(kept, limit=no_limit) is Reservation.QUEUED

            [due] = await ledger.take_due(limit=10, lease_seconds=60)
            assert due.notification.event_id == event.event_id
            assert due.give_up_at == give_up_at
            assert due.attempts == 1
            await ledger.reschedule(
                kept.notification, due_at=now - timedelta(seconds=1), reason="SMTP: again"
            )
            [again] = await ledger.take_due(limit=10, lease_seconds=60)
            assert again.give_up_at == give_up_at
            assert again.attempts == 2

            assert await ledger.skip(entry_of(old), status=Status.TOO_OLD, reason="too old")
            assert not await ledger.skip(entry_of(old), status=Status.TOO_OLD, reason="again")
            assert not await ledger.skip(done, status=Status.TOO_OLD, reason="too old")
            rows = {
                r["event_id"]: (r["status"], r["reason"])
                for r in await pool.fetch(
                    "SELECT event_id, status, reason FROM notification_ledger"
                )
            }
            assert rows[old.event_id] == ("too_old", "too old")
            assert rows[sent.event_id] == ("sent", None)
        finally:
            await close_pool(pool)
