from __future__ import annotations

from notification_service.adapters.postgres import MIGRATIONS, PACKAGE
from notification_service.app import create_app
from notification_service.settings import APP_ID, Settings
from taskevents.postgres import migrate_command, packaged_migrations
from taskevents.web import run_service


def main() -> None:
    run_service(APP_ID, Settings, create_app, migrate=migrate)


async def migrate(settings: Settings) -> int:
    return await migrate_command(
        settings.database_url.get_secret_value(),
        packaged_migrations(PACKAGE),
        MIGRATIONS,
        connect_timeout_seconds=settings.state_timeout_seconds,
        database=settings.database_location,
    )
