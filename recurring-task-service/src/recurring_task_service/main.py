from __future__ import annotations

from recurring_task_service.adapters.postgres import MIGRATION_LEDGER
from recurring_task_service.app import create_app
from recurring_task_service.bootstrap import migrations_dir
from recurring_task_service.settings import APP_ID, Settings
from taskevents.postgres import migrate_command
from taskevents.web import run_service


async def migrate(settings: Settings) -> int:
    return await migrate_command(
        str(settings.database_url),
        migrations_dir(settings),
        MIGRATION_LEDGER,
        connect_timeout_seconds=settings.database_connect_timeout_seconds,
        database=settings.database_name,
    )


def main() -> None:
    run_service(APP_ID, Settings, create_app, migrate=migrate)


if __name__ == "__main__":
    main()
