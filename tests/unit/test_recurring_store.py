"""The Postgres store refuses work until the schema is migrated, so nothing — the API, a
delivery, the timer — touches tables that may not exist yet."""

from __future__ import annotations

import uuid
from typing import cast

import asyncpg
import pytest

from recurring_task_service.adapters.postgres import PostgresSchedules
from recurring_task_service.ports import StoreUnavailableError
from taskevents.postgres import SchemaStatus


async def test_the_store_is_unavailable_until_the_schema_is_migrated() -> None:
    schema = SchemaStatus(waiting_for="database unavailable: connection refused")
    store = PostgresSchedules(cast(asyncpg.Pool, None), schema)  # never reached

    with pytest.raises(StoreUnavailableError, match="not migrated yet: database unavailable"):
        await store.get(uuid.uuid4())
    with pytest.raises(StoreUnavailableError, match="not migrated yet"):
        async with store.claim_due(limit=10):
            pass
    with pytest.raises(StoreUnavailableError, match="not migrated yet"):
        await store.lease(limit=10, lease_seconds=30)
