"""The uvicorn server of the service: WebSocket pings and compression from the settings,
tokens kept out of the request log, and clients closed with 1001 before uvicorn's own
shutdown would close them with 1012."""

from __future__ import annotations

import logging
import re
import socket

import uvicorn
from fastapi import FastAPI

from taskevents.web import GRACEFUL_SHUTDOWN_SECONDS, STATE_KEY
from websocket_service.bootstrap import Services
from websocket_service.settings import Settings

# Longer than daprd keeps idle connections, so that it never reuses one we close.
KEEP_ALIVE_SECONDS = 75
TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"]+")


class GoingAwayServer(uvicorn.Server):
    """uvicorn closes open WebSockets with 1012 when it shuts down, before the lifespan
    ends; this server first closes them with 1001 (going away) through the hub."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new clients while the current ones are let go
        services = self.lifespan.state.get(STATE_KEY)
        if isinstance(services, Services):
            await services.close_all_clients()
        await super().shutdown(sockets)


class RedactTokens(logging.Filter):
    """uvicorn logs the WebSocket request line, query string included: never the token."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = TOKEN_IN_URL.sub(r"\1[redacted]", record.msg)
        return True


def serve_websockets(app: FastAPI, settings: Settings) -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(RedactTokens())
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ws_ping_interval_seconds,
        ws_ping_timeout=settings.ws_ping_timeout_seconds,
        ws_per_message_deflate=settings.ws_compression,
    )
    GoingAwayServer(config).run()
