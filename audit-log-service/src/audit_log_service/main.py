from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from audit_log_service.adapters.migrations import (
    MigrationError,
    default_migrations_dir,
    migrate_database,
)
from audit_log_service.app import create_app
from audit_log_service.ports import StorageUnavailableError
from audit_log_service.settings import APP_ID, Settings
from taskevents.logging import configure_logging, get_logger
from taskevents.web import serve

logger = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=APP_ID, description="The taskevents audit log.")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "migrate"),
        default="serve",
        help="serve (the default): run the service; migrate: apply the database migrations "
        "and exit",
    )
    command = parser.parse_args(argv).command
    settings = Settings()
    configure_logging(APP_ID, level=settings.log_level, json=settings.json_logs)
    if command == "migrate":
        sys.exit(asyncio.run(migrate(settings)))
    serve(create_app(settings), host=settings.host, port=settings.port)


async def migrate(settings: Settings) -> int:
    directory = settings.migrations_dir or default_migrations_dir()
    try:
        applied = await migrate_database(
            settings.database_dsn,
            directory,
            connect_timeout_seconds=settings.db_connect_timeout_seconds,
        )
    except StorageUnavailableError as error:
        logger.error(
            "cannot reach the database; is it running, and is DATABASE_URL right?",
            database=settings.database_location,
            error=str(error),
        )
        return 1
    except MigrationError as error:
        logger.error("migration failed; nothing after it was applied", error=str(error))
        return 1
    logger.info(
        "database is up to date",
        database=settings.database_location,
        applied=[migration.filename for migration in applied] or "nothing to do",
    )
    return 0


if __name__ == "__main__":
    main()
