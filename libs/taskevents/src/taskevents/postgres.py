"""Postgres plumbing for every service that keeps a database (asyncpg; the `postgres`
extra): one classification of errors, one pool factory with timeouts and the jsonb codec,
and versioned migrations with checksums under an advisory lock."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import re
import ssl
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from taskevents.background import in_background
from taskevents.logging import get_logger
from taskevents.retry import UNTIL_DEPENDENCY_ANSWERS, RetryPolicy

log = get_logger(__name__)

# Trouble that goes away by itself: the database is down, restarting, unreachable, out of
# connections, or the transaction lost a race. Whoever meets it tries again later.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable; TimeoutError (connect, acquire, command) too
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed, pool closing
    asyncpg.exceptions.OperatorInterventionError,  # cannot connect now, admin shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
)
# The database refuses these values and always will: retrying cannot help.
PERMANENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


class DatabaseUnavailableError(Exception):
    """The database does not answer just now (a transient error, described)."""


class ValueRefusedError(Exception):
    """The database refuses the values themselves (a permanent error, described)."""


def describe_db_error(error: BaseException) -> str:
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


@contextmanager
def translated_db_errors(
    unavailable: type[Exception] = DatabaseUnavailableError,
    refused: type[Exception] | None = None,
) -> Iterator[None]:
    """Turn asyncpg's errors into a service's own: transient ones into `unavailable`, and,
    when given, permanent ones into `refused`. Anything else (a bug) passes unchanged."""
    try:
        yield
    except PERMANENT_DB_ERRORS as error:
        if refused is None:
            raise
        raise refused(describe_db_error(error)) from error
    except TRANSIENT_DB_ERRORS as error:
        raise unavailable(describe_db_error(error)) from error


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_size: int = 5
    min_size: int = 0  # no connection at start: a database that is down only delays use
    connect_timeout_seconds: float = 5.0
    command_timeout_seconds: float = 10.0


async def _with_json_codec(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def create_pool(dsn: str, settings: PoolSettings) -> asyncpg.Pool:
    """A pool whose connections time out when connecting and per command, and read and
    write jsonb as Python values (pass dicts and lists, never JSON strings)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=settings.min_size,
        max_size=settings.max_size,
        timeout=settings.connect_timeout_seconds,
        command_timeout=settings.command_timeout_seconds,
        init=_with_json_codec,
    )
    return pool


async def close_pool(pool: asyncpg.Pool, *, timeout_seconds: float = 10.0) -> None:
    """Close gracefully; terminate what is still busy after the timeout."""
    try:
        await asyncio.wait_for(pool.close(), timeout_seconds)
    except TimeoutError:
        pool.terminate()


async def database_check(pool: asyncpg.Pool, *, timeout_seconds: float = 2.0) -> str | None:
    """A readiness check: None when the database answers within the timeout."""
    try:
        async with pool.acquire(timeout=timeout_seconds) as connection:
            await connection.fetchval("SELECT 1", timeout=timeout_seconds)
    except TRANSIENT_DB_ERRORS as error:
        return f"database unavailable: {describe_db_error(error)}"
    return None


# Migrations ------------------------------------------------------------------------------

MIGRATION_FILE = re.compile(r"^(?P<version>\d{4,})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")


class MigrationError(Exception):
    """The migrations themselves are wrong: a bad file name, a duplicate version, bad SQL, or
    a migration edited after it was applied. Trying again cannot help."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    filename: str
    sql: str = field(repr=False)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class MigrationLedger:
    """Where a service records its applied migrations, and the advisory lock that
    serialises its replicas. The services may share one database (they do locally), so
    each has a table and a lock key of its own."""

    table: str
    lock_key: int


def packaged_migrations(package: str) -> Path:
    """A service's migrations folder: inside the installed wheel (`<package>/migrations`,
    force-included at build time) or, in a source checkout, beside `src/`."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise MigrationError(f"package {package} is not installed")
    package_dir = Path(spec.origin).resolve().parent
    shipped = package_dir / "migrations"
    if shipped.is_dir():
        return shipped
    return package_dir.parent.parent / "migrations"


def parse_migration_filename(filename: str) -> tuple[int, str]:
    match = MIGRATION_FILE.match(filename)
    if match is None:
        raise MigrationError(
            f"{filename}: a migration file is named NNNN_description.sql "
            "(digits, an underscore, lower-case letters, digits and underscores)"
        )
    return int(match["version"]), match["name"]


def order_migrations(files: dict[str, str]) -> list[Migration]:
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


def load_migrations(directory: Path) -> list[Migration]:
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


async def apply_migrations(
    connection: Any, migrations: Sequence[Migration], ledger: MigrationLedger
) -> list[Migration]:
    """Apply what is missing, each file in a transaction of its own, under the ledger's
    advisory lock; returns what was applied. A ledger made before checksums were recorded
    is upgraded in place: its rows take the checksums of the files as they are now."""
    table = ledger.table
    await connection.execute("SELECT pg_advisory_lock($1)", ledger.lock_key)
    try:
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {table} (
                    version    integer     PRIMARY KEY,
                    name       text        NOT NULL,
                    checksum   text,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        await connection.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS checksum text")
        known = {m.version: m for m in migrations}
        rows = await connection.fetch(f"SELECT version, checksum FROM {table}")  # noqa: S608
        applied: dict[int, str | None] = {int(r["version"]): r["checksum"] for r in rows}
        unknown = sorted(set(applied) - set(known))
        if unknown:
            # A newer release migrated this database; an older replica may still run on it.
            log.warning("database has migrations this code does not know", versions=unknown)
        for version, recorded in applied.items():
            migration = known.get(version)
            if migration is None:
                continue
            if recorded is None:
                await connection.execute(
                    f"UPDATE {table} SET checksum = $2 WHERE version = $1",  # noqa: S608
                    version,
                    migration.checksum,
                )
            elif recorded != migration.checksum:
                raise MigrationError(
                    f"{migration.filename} was changed after it was applied; "
                    "applied migrations are never edited: add a new one instead"
                )
        done = []
        for migration in pending_migrations(migrations, applied):
            try:
                async with connection.transaction():
                    await connection.execute(migration.sql)
                    await connection.execute(
                        f"INSERT INTO {table} (version, name, checksum) VALUES ($1, $2, $3)",  # noqa: S608
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as error:
                if isinstance(error, TRANSIENT_DB_ERRORS):
                    raise
                raise MigrationError(f"{migration.filename} failed: {error}") from error
            log.info("migration applied", version=migration.version, name=migration.name)
            done.append(migration)
        return done
    finally:
        if not connection.is_closed():
            await connection.execute("SELECT pg_advisory_unlock($1)", ledger.lock_key)


async def migrate(
    dsn: str, directory: Path, ledger: MigrationLedger, *, connect_timeout_seconds: float
) -> list[Migration]:
    """Bring the database up to date over a connection of its own (no command timeout: an
    index on a big table may take a while). DatabaseUnavailableError when it does not
    answer; MigrationError when the migrations are wrong."""
    migrations = load_migrations(directory)
    try:
        connection = await asyncpg.connect(dsn, timeout=connect_timeout_seconds)
        try:
            return await apply_migrations(connection, migrations, ledger)
        finally:
            await connection.close()
    except TRANSIENT_DB_ERRORS as error:
        raise DatabaseUnavailableError(describe_db_error(error)) from error


@dataclass(frozen=True, slots=True)
class Migrations:
    """A service's migrations and the database they go to."""

    dsn: str
    directory: Path
    ledger: MigrationLedger
    connect_timeout_seconds: float
    database: str  # host:port/name, for logs (never the password)


@dataclass
class SchemaStatus:
    """Whether the migrations have run; until they have, the service is not ready and
    work that needs the database waits (deliveries: RETRY)."""

    migrated: bool = False
    failure: str | None = None  # broken migrations: no point trying again
    waiting_for: str | None = None  # why the migrations have not run yet

    def problem(self) -> str | None:
        if self.failure is not None:
            return f"migrations failed: {self.failure}"
        if not self.migrated:
            return f"the schema is not migrated yet: {self.waiting_for or 'migrations pending'}"
        return None


async def migrate_when_reachable(
    dsn: str,
    directory: Path,
    ledger: MigrationLedger,
    status: SchemaStatus,
    *,
    connect_timeout_seconds: float,
    policy: RetryPolicy = UNTIL_DEPENDENCY_ANSWERS,
) -> None:
    """Migrate once the database answers, trying again per `policy`: a replica may start
    before its database does. The outcome lands in `status`; broken migrations are recorded
    there and not retried."""

    async def attempt() -> list[Migration]:
        try:
            return await migrate(
                dsn, directory, ledger, connect_timeout_seconds=connect_timeout_seconds
            )
        except DatabaseUnavailableError as error:
            status.waiting_for = f"database unavailable: {error}"
            raise

    try:
        await policy.call(DatabaseUnavailableError, attempt)
    except MigrationError as error:
        status.failure = str(error)
        log.error("migrations failed; the service stays unready", error=str(error))
    except DatabaseUnavailableError as error:
        status.failure = f"database unavailable, gave up: {error}"
        log.error("database never answered; migrations gave up", error=str(error))
    else:
        status.migrated = True
        status.waiting_for = None
        log.info("database migrated")


async def migrate_command(
    dsn: str,
    directory: Path,
    ledger: MigrationLedger,
    *,
    connect_timeout_seconds: float,
    database: str,
) -> int:
    """`<service> migrate`: apply the migrations and say what happened; the exit status."""
    try:
        applied = await migrate(
            dsn, directory, ledger, connect_timeout_seconds=connect_timeout_seconds
        )
    except DatabaseUnavailableError as error:
        if isinstance(error.__cause__, ssl.SSLCertVerificationError):
            log.error(
                "the database's TLS certificate was refused: is sslrootcert in DATABASE_URL "
                "the CA that signed it, and does the host name match it (sslmode=verify-full)?",
                database=database,
                error=str(error),
            )
            return 1
        log.error(
            "cannot reach the database; is it running, and is DATABASE_URL right?",
            database=database,
            error=str(error),
        )
        return 1
    except MigrationError as error:
        log.error("migration failed; nothing after it was applied", error=str(error))
        return 1
    log.info(
        "database is up to date",
        database=database,
        applied=[migration.filename for migration in applied] or "nothing to do",
    )
    return 0


async def migrate_at_start(
    migrations: Migrations,
    status: SchemaStatus,
    stack: AsyncExitStack,
    *,
    then: Callable[[], None] | None = None,
) -> None:
    """Every service's start: a database that answers is migrated before the service takes
    requests (broken migrations stop the start). One that does not only delays that: the
    service serves, unready, and the migrations are tried again in the background until
    it answers (a task the exit of `stack` cancels). `then` runs once migrated."""
    try:
        await migrate(
            migrations.dsn,
            migrations.directory,
            migrations.ledger,
            connect_timeout_seconds=migrations.connect_timeout_seconds,
        )
    except DatabaseUnavailableError as error:
        status.waiting_for = f"database unavailable: {error}"
        log.warning(
            "database unavailable at start; serving unready, migrating once it answers",
            database=migrations.database,
            error=str(error),
        )
    else:
        status.migrated = True
        if then is not None:
            then()
        return

    async def later() -> None:
        await migrate_when_reachable(
            migrations.dsn,
            migrations.directory,
            migrations.ledger,
            status,
            connect_timeout_seconds=migrations.connect_timeout_seconds,
        )
        if status.migrated and then is not None:
            then()

    in_background(stack, later(), name=f"migrations:{migrations.ledger.table}")
