from __future__ import annotations

import logging
import re
import socket

import uvicorn

from taskevents.logging import configure_logging
from websocket_service.app import close_all_clients, create_app, hub_of
from websocket_service.hub import Hub
from websocket_service.settings import APP_ID, Settings


class GoingAwayServer(uvicorn.Server):
    """uvicorn closes open WebSockets with 1012 when it shuts down, before the lifespan
    ends; this server first closes them with 1001 (going away) through the hub."""

    def __init__(self, config: uvicorn.Config, *, hub: Hub, grace_seconds: float) -> None:
        super().__init__(config)
        self._hub = hub
        self._grace_seconds = grace_seconds

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new clients while the current ones are let go
        await close_all_clients(self._hub, grace_seconds=self._grace_seconds)
        await super().shutdown(sockets)


TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """uvicorn logs the WebSocket request line, query string included: never the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = TOKEN_IN_URL.sub(r"\1[redacted]", record.msg)
        return True


def main() -> None:
    settings = Settings()
    configure_logging(APP_ID, level=settings.log_level, json=settings.json_logs)
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactTokens())
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=10,
        # Longer than daprd keeps idle connections, so that it never reuses one we close.
        timeout_keep_alive=75,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        ws_per_message_deflate=settings.ws_compression,
    )
    GoingAwayServer(config, hub=hub_of(app), grace_seconds=settings.shutdown_grace_seconds).run()


if __name__ == "__main__":
    main()
