from __future__ import annotations

from notification_service.app import create_app
from notification_service.settings import APP_ID, Settings
from taskevents.logging import configure_logging
from taskevents.web import serve


def main() -> None:
    settings = Settings()
    configure_logging(APP_ID, level=settings.log_level, json=settings.json_logs)
    serve(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
