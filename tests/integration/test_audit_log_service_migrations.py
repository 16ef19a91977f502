"""The audit log's migrations on a real Postgres, each test in a database of its own: a
ledger that an older release made (no checksums) is upgraded in place, and a migration
edited after it was applied is refused."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from pydantic import SecretStr

from audit_log_service.adapters.postgres import AUDIT_MIGRATIONS
from audit_log_service.main import migrate as migrate_command
from audit_log_service.settings import Settings
from taskevents.postgres import MigrationError, load_migrations, migrate, packaged_migrations
from tests.support.stack import Stack, scratch_database

pytestmark = pytest.mark.integration

MIGRATIONS = packaged_migrations("audit_log_service")
# The ledger as releases before checksums made it.
LEDGER_WITHOUT_CHECKSUMS = """
CREATE TABLE audit_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())
"""
APPLIED_BY_AN_OLDER_RELEASE = 3


@pytest_asyncio.fixture
async def database(stack: Stack) -> AsyncIterator[str]:
    async with scratch_database(stack, "taskevents_audit_migrations") as url:
        yield url


async def test_a_ledger_without_checksums_is_upgraded_in_place(database: str) -> None:
    migrations = load_migrations(MIGRATIONS)
    connection = await asyncpg.connect(database)
    try:
        # What an older release left: the first migrations applied, recorded without checksums.
        await connection.execute(LEDGER_WITHOUT_CHECKSUMS)
        for migration in migrations[:APPLIED_BY_AN_OLDER_RELEASE]:
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO audit_schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )

        status = await migrate_command(Settings(database_url=SecretStr(database)))

        assert status == 0
        rows = await connection.fetch(
            "SELECT version, name, checksum FROM audit_schema_migrations ORDER BY version"
        )
        assert [(r["version"], r["name"], r["checksum"]) for r in rows] == [
            (m.version, m.name, m.checksum) for m in migrations
        ]
        assert await connection.fetchval("SELECT to_regclass('dead_letters') IS NOT NULL")
    finally:
        await connection.close()


async def test_a_migration_edited_after_it_was_applied_is_refused(
    database: str, tmp_path: Path
) -> None:
    await migrate(database, MIGRATIONS, AUDIT_MIGRATIONS, connect_timeout_seconds=5)
    edited = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, edited)
    with (edited / "0002_dead_letters.sql").open("a") as sql:
        sql.write("\nCREATE INDEX dead_letters_by_reason ON dead_letters (reason);\n")

    with pytest.raises(MigrationError, match=r"0002_dead_letters\.sql was changed after it"):
        await migrate(database, edited, AUDIT_MIGRATIONS, connect_timeout_seconds=5)

    # The service's own command says so too, and exits with a failure.
    settings = Settings(database_url=SecretStr(database), migrations_dir=edited)
    assert await migrate_command(settings) == 1
    connection = await asyncpg.connect(database)
    try:
        assert not await connection.fetchval(
            "SELECT to_regclass('dead_letters_by_reason') IS NOT NULL"
        )
    finally:
        await connection.close()
