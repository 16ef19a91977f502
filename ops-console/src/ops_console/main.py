from __future__ import annotations

from ops_console.app import create_app
from ops_console.settings import APP_ID, Settings
from taskevents.web import run_service


def main() -> None:
    run_service(APP_ID, Settings, create_app)


if __name__ == "__main__":
    main()
