"""The system of record keeps every valid event it is given, on the real Postgres: legal
JSON that Postgres cannot hold as it is (a NUL character, a lone surrogate) is stored, with
U+FFFD in its place, in a batch beside ordinary events — never refused, never dropped."""

from __future__ import annotations

import pytest

from audit_log_service.adapters.postgres import AUDIT_MIGRATIONS, PostgresAuditLog
from audit_log_service.handlers import record_events
from audit_log_service.ports import Delivery, EventFilter
from taskevents.events import TaskEvent
from taskevents.postgres import (
    PoolSettings,
    SchemaStatus,
    close_pool,
    create_pool,
    migrate,
    packaged_migrations,
)
from taskevents.status import DaprStatus
from tests.support.stack import Stack, scratch_database

pytestmark = pytest.mark.integration


async def test_events_with_nul_characters_are_kept(stack: Stack, unique: str) -> None:
    user = f"user-{unique}"
    ordinary = TaskEvent.create("task.created", task_id="t-1", user_id=user, payload={"a": 1})
    awkward = TaskEvent.create(
        "task.updated",
        task_id="t-\x00",
        user_id=user,
        payload={"title": "before\x00after", "notes": ["\ud800", {"k\x00": "v"}]},
    )
    async with scratch_database(stack, "audit_values") as dsn:
        await migrate(
            dsn, packaged_migrations("audit_log_service"), AUDIT_MIGRATIONS,
            connect_timeout_seconds=5,
        )  # fmt: skip
        pool = await create_pool(dsn, PoolSettings(max_size=2))
        try:
            log = PostgresAuditLog(pool, SchemaStatus(migrated=True), acquire_timeout_seconds=5)
            outcomes = await record_events(
                [(ordinary, Delivery()), (awkward, Delivery())], audit_log=log
            )
            assert [o.status for o in outcomes] == [DaprStatus.SUCCESS] * 2
            rows = await log.list_events(EventFilter(user_id=user, limit=10))
            stored = {row.event_id: row for row in rows}
            assert set(stored) == {ordinary.event_id, awkward.event_id}
            assert stored[awkward.event_id].task_id == "t-\ufffd"
            assert stored[awkward.event_id].payload == {
                "title": "before\ufffdafter",
                "notes": ["?", {"k\ufffd": "v"}],
            }
        finally:
            await close_pool(pool)
