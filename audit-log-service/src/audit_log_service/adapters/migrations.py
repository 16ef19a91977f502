"""Versioned SQL migrations: migrations/NNNN_description.sql, each applied once, in order,
in a transaction of its own, and recorded in MIGRATIONS_TABLE. A whole run holds a Postgres
advisory lock, so replicas starting together apply each file exactly once between them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from audit_log_service.adapters.postgres import (
    TRANSIENT_DB_ERRORS,
    SchemaStatus,
    describe_db_error,
)
from audit_log_service.ports import StorageUnavailableError
from taskevents.logging import get_logger

logger = get_logger(__name__)

# The services may share one database (they do locally), so each keeps its own ledger and
# its own lock rather than one `schema_migrations` whose versions would collide.
MIGRATIONS_TABLE = "audit_schema_migrations"
# Any bigint works, as long as no other migrator in the database uses it: "audit_lg" in ASCII.
MIGRATION_LOCK_KEY = 0x61756469745F6C67
MIGRATION_FILE = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


class MigrationError(Exception):
    """The migrations themselves are wrong (a bad file name, a duplicate version, bad SQL)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    filename: str
    sql: str = field(repr=False)


def default_migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    shipped = package / "migrations"  # inside a built wheel
    if shipped.is_dir():
        return shipped
    return package.parent.parent / "migrations"  # a source checkout: audit-log-service/


def parse_migration_filename(filename: str) -> tuple[int, str]:
    match = MIGRATION_FILE.match(filename)
    if match is None:
        raise MigrationError(
            f"{filename}: a migration file is named NNNN_description.sql "
            "(digits, an underscore, lower-case letters, digits and underscores)"
        )
    return int(match["version"]), match["name"]


def order_migrations(files: Mapping[str, str]) -> list[Migration]:
    """Migrations from {file name: SQL}, in version order."""
    by_version: dict[int, Migration] = {}
    for filename, sql in files.items():
        version, name = parse_migration_filename(filename)
        if version in by_version:
            raise MigrationError(
                f"two migrations with version {version}: "
                f"{by_version[version].filename} and {filename}"
            )
        by_version[version] = Migration(version, name, filename, sql)
    return [by_version[version] for version in sorted(by_version)]


def discover_migrations(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"no migrations folder at {directory}")
    try:
        files = {path.name: path.read_text(encoding="utf-8") for path in directory.glob("*.sql")}
    except (OSError, UnicodeDecodeError) as error:
        raise MigrationError(f"cannot read the migrations in {directory}: {error}") from error
    if not files:
        raise MigrationError(f"no migrations (*.sql) in {directory}")
    return order_migrations(files)


def pending_migrations(
    migrations: Iterable[Migration], applied_versions: Collection[int]
) -> list[Migration]:
    return [m for m in migrations if m.version not in applied_versions]


async def apply_migrations(connection: Any, migrations: list[Migration]) -> list[Migration]:
    """Apply what is missing on this connection; returns what was applied."""
    await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
                    version    integer     PRIMARY KEY,
                    name       text        NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await connection.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")  # noqa: S608
        applied_versions = {int(row["version"]) for row in rows}
        unknown = applied_versions - {m.version for m in migrations}
        if unknown:
            # A newer release migrated this database; an older replica may still run on it.
            logger.warning("database has migrations this code does not know", versions=unknown)
        applied = []
        for migration in pending_migrations(migrations, applied_versions):
            try:
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",  # noqa: S608
                        migration.version,
                        migration.name,
                    )
            except asyncpg.PostgresError as error:
                if isinstance(error, TRANSIENT_DB_ERRORS):
                    raise
                raise MigrationError(f"{migration.filename} failed: {error}") from error
            logger.info("migration applied", version=migration.version, name=migration.name)
            applied.append(migration)
        return applied
    finally:
        if not connection.is_closed():
            await connection.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def migrate_database(
    dsn: str, directory: Path, *, connect_timeout_seconds: float
) -> list[Migration]:
    """Bring the database up to date over a connection of its own (no command timeout: an
    index on a big table may take a while). StorageUnavailableError when it does not answer."""
    migrations = discover_migrations(directory)
    try:
        connection = await asyncpg.connect(dsn, timeout=connect_timeout_seconds)
        try:
            return await apply_migrations(connection, migrations)
        finally:
            await connection.close()
    except TRANSIENT_DB_ERRORS as error:
        raise StorageUnavailableError(describe_db_error(error)) from error


async def migrate_when_reachable(
    dsn: str, directory: Path, status: SchemaStatus, *, connect_timeout_seconds: float
) -> None:
    """Keep trying until the database answers, then migrate: a replica may start before its
    database does. A broken migration is recorded in `status` and not retried."""
    delay = FIRST_RETRY_SECONDS
    while True:
        try:
            await migrate_database(dsn, directory, connect_timeout_seconds=connect_timeout_seconds)
        except StorageUnavailableError as error:
            status.waiting_for = f"database unavailable: {error}"
            logger.warning(
                "database unavailable; migrations wait", error=str(error), retry_in_seconds=delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)
        except MigrationError as error:
            status.failure = str(error)
            logger.error("migrations failed; the audit log stays unready", error=str(error))
            return
        else:
            status.migrated = True
            logger.info("database migrated; the audit log is ready")
            return
