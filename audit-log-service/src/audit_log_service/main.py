from __future__ import annotations

from audit_log_service.adapters.postgres import AUDIT_MIGRATIONS
from audit_log_service.app import create_app
from audit_log_service.settings import APP_ID, Settings
from taskevents.postgres import migrate_command
from taskevents.web import run_service


def main() -> None:
    run_service(APP_ID, Settings, create_app, migrate=migrate)


async def migrate(settings: Settings) -> int:
    return await migrate_command(
        settings.database_dsn,
        settings.migrations_dir,
        AUDIT_MIGRATIONS,
        connect_timeout_seconds=settings.db_connect_timeout_seconds,
        database=settings.database_location,
    )
