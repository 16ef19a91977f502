from __future__ import annotations

from taskevents.web import run_service
from websocket_service.app import create_app
from websocket_service.server import serve_websockets
from websocket_service.settings import APP_ID, Settings


def main() -> None:
    run_service(APP_ID, Settings, create_app, server=serve_websockets)


if __name__ == "__main__":
    main()
