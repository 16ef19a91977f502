from __future__ import annotations

import uvicorn

from notification_service.app import create_app
from notification_service.settings import APP_ID, Settings
from taskevents.logging import configure_logging


def main() -> None:
    settings = Settings()
    configure_logging(APP_ID, level=settings.log_level, json=settings.json_logs)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
