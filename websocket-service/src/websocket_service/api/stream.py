"""`WS /ws`: authenticate, register with the hub, then run a sender (hub queue → socket)
and a receiver (client messages) until either ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from taskevents.logging import get_logger
from websocket_service.frames import reply_to_client_message, welcome_frame
from websocket_service.hub import ClientConnection, Close, CloseCode, Hub, fit_close_reason
from websocket_service.ports import TokenRejectedError, TokenVerifier

log = get_logger(__name__)

SocketGone = (WebSocketDisconnect, WebSocketDisconnected)


def stream_router(hub: Hub, tokens: TokenVerifier, *, close_grace_seconds: float) -> APIRouter:
    router = APIRouter()

    @router.websocket("/ws")
    async def stream(websocket: WebSocket, token: Annotated[str | None, Query()] = None) -> None:
        try:
            identity = tokens.verify(token)
        except TokenRejectedError as error:
            # Accept, then close: a browser sees the close code and reason, never an HTTP
            # status. Nothing else is sent.
            await websocket.accept()
            await websocket.close(CloseCode.POLICY_VIOLATION, fit_close_reason(error.reason))
            log.info("client rejected", reason=error.reason)
            return
        await websocket.accept()
        with hub.connect(identity.user_id) as connection:
            log.info("client connected", user_id=identity.user_id, connection=connection.id)
            connection.offer(welcome_frame(identity.user_id, connection.id))
            await _until_first_ends(
                lambda: _send_frames(websocket, connection),
                lambda: _receive_messages(websocket, connection),
                lambda: _enforce_close(connection, close_grace_seconds),
            )
        close = connection.close_requested
        log.info(
            "client disconnected",
            user_id=identity.user_id,
            connection=connection.id,
            closed_by_server=int(close.code) if close else None,
        )

    return router


async def _until_first_ends(*sides: Callable[[], Awaitable[None]]) -> None:
    """Run the sides in one task group; the first to end cancels the others. A socket
    that went away is a normal end; any other error propagates."""

    async def run(side: Callable[[], Awaitable[None]]) -> None:
        with contextlib.suppress(*SocketGone):
            await side()

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run(side)) for side in sides]

        def stop_the_others(_: asyncio.Task[None]) -> None:
            for task in tasks:
                task.cancel()

        for task in tasks:
            task.add_done_callback(stop_the_others)


async def _send_frames(websocket: WebSocket, connection: ClientConnection) -> None:
    while True:
        frame = await connection.next_frame()
        if isinstance(frame, Close):
            await websocket.close(frame.code, frame.reason)
            return
        await websocket.send_text(frame)


async def _receive_messages(websocket: WebSocket, connection: ClientConnection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        connection.offer(reply_to_client_message(message.get("text")))


async def _enforce_close(connection: ClientConnection, grace_seconds: float) -> None:
    # A client that stopped reading blocks the sender in a send, so it never reaches the
    # close frame: after the grace period the connection is dropped regardless.
    await connection.wait_close_requested()
    await asyncio.sleep(grace_seconds)
