from __future__ import annotations

import logging

from recurring_task_service.app import create_app
from recurring_task_service.settings import APP_ID, Settings
from taskevents.logging import configure_logging
from taskevents.web import serve


def main() -> None:
    settings = Settings()
    configure_logging(APP_ID, level=settings.log_level, json=settings.json_logs)
    # APScheduler logs every run of the poll job (once a second) and httpx every readiness
    # probe of the sidecar; our own log says what fired.
    for chatty in ("apscheduler.executors", "apscheduler.scheduler"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    serve(create_app(settings), host=settings.host, port=settings.port)


if __name__ == "__main__":
    main()
