"""`WS /ws`: authenticate, register with the hub, replay what a resuming client missed,
then run a sender (hub queue → socket), a receiver (client messages), heartbeats and the
close enforcer until the first of them ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Query, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketDisconnected

from taskevents.auth import Identity, TokenRejectedError
from taskevents.logging import get_logger
from websocket_service.bootstrap import AuditLogDep, HubDep, TokenVerifierDep
from websocket_service.frames import (
    ChangeSubscription,
    Malformed,
    Ping,
    batch_frame,
    event_frame,
    heartbeat_frame,
    parse_client_message,
    pong_frame,
    resume_frame,
    subscribed_frame,
    welcome_frame,
)
from websocket_service.handlers import CatchUp, plan_catch_up
from websocket_service.hub import ClientConnection, Close, CloseCode, Hub, fit_close_reason
from websocket_service.metrics import CONNECTIONS, FRAMES_SENT, RESUMES, SLOW_CLIENTS_CLOSED
from websocket_service.ports import AuditLog
from websocket_service.settings import Settings

log = get_logger(__name__)

SocketGone = (WebSocketDisconnect, WebSocketDisconnected)
SUBPROTOCOL = "taskevents.v1"
BEARER_PREFIX = "bearer."
MAX_BATCH_FRAMES = 500


@dataclass(frozen=True, slots=True)
class StreamOptions:
    close_grace_seconds: float
    heartbeat_seconds: float
    coalesce_seconds: float
    resume_timeout_seconds: float
    resume_max_events: int
    max_connections: int
    max_connections_per_user: int
    max_filter_items: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamOptions:
        return cls(
            close_grace_seconds=settings.close_grace_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            coalesce_seconds=settings.coalesce_milliseconds / 1000,
            resume_timeout_seconds=settings.resume_timeout_seconds,
            resume_max_events=settings.resume_max_events,
            max_connections=settings.max_connections,
            max_connections_per_user=settings.max_connections_per_user,
            max_filter_items=settings.max_filter_items,
        )


def choose_subprotocol(offered: list[str]) -> tuple[str | None, str | None]:
    """(the subprotocol to echo, the token carried as `bearer.<JWT>`). The token is never
    echoed: the server answers with `taskevents.v1` when the client offered it."""
    token = next((p[len(BEARER_PREFIX) :] for p in offered if p.startswith(BEARER_PREFIX)), None)
    return (SUBPROTOCOL if SUBPROTOCOL in offered else None), token


def stream_router(settings: Settings) -> APIRouter:
    options = StreamOptions.from_settings(settings)
    router = APIRouter()

    @router.websocket("/ws")
    async def stream(
        websocket: WebSocket,
        hub: HubDep,
        tokens: TokenVerifierDep,
        audit: AuditLogDep,
        token: Annotated[str | None, Query()] = None,
        last_event_id: Annotated[str | None, Query(max_length=200)] = None,
        watch: Annotated[Literal["all"] | None, Query()] = None,
    ) -> None:
        subprotocol, protocol_token = choose_subprotocol(websocket.scope.get("subprotocols", []))
        try:
            if protocol_token is not None and subprotocol is None:
                raise TokenRejectedError(
                    f"a token in Sec-WebSocket-Protocol needs the subprotocol {SUBPROTOCOL} too"
                )
            # Kept for the resume: the audit log is asked with the client's own token.
            bearer_token = token or protocol_token
            if not bearer_token:
                raise TokenRejectedError(
                    f"missing token: pass ?token=<JWT> or the subprotocols {SUBPROTOCOL}, "
                    "bearer.<JWT>"
                )
            identity = await tokens.verify(bearer_token)
            if watch == "all" and not identity.operator:
                raise TokenRejectedError("watching every user needs the operator role")
        except TokenRejectedError as error:
            # Accept, then close: a browser sees the close code and reason, never an HTTP
            # status. Nothing else is sent.
            await websocket.accept(subprotocol=subprotocol)
            code = CloseCode.TRY_AGAIN_LATER if error.retry_later else CloseCode.POLICY_VIOLATION
            await websocket.close(code, fit_close_reason(error.reason))
            log.info("client rejected", reason=error.reason)
            return
        await websocket.accept(subprotocol=subprotocol)
        refused = hub.refusal(
            identity.user_id,
            max_total=options.max_connections,
            max_per_user=options.max_connections_per_user,
        )
        if refused is not None:
            await websocket.close(refused.code, refused.reason)
            log.info("client refused", user_id=identity.user_id, reason=refused.reason)
            return
        watch_all = watch == "all"
        with hub.connect(identity.user_id, watch_all=watch_all, hold=bool(last_event_id)) as conn:
            CONNECTIONS.inc()
            try:
                log.info("client connected", user_id=identity.user_id, connection=conn.id)
                await websocket.send_text(
                    welcome_frame(
                        identity.user_id,
                        conn.id,
                        watch_all=watch_all,
                        heartbeat_seconds=options.heartbeat_seconds or None,
                    )
                )
                with contextlib.suppress(*SocketGone):
                    if last_event_id:
                        await _catch_up(
                            websocket,
                            conn,
                            identity,
                            bearer_token,
                            last_event_id,
                            hub,
                            audit,
                            options,
                        )
                    await _until_first_ends(
                        lambda: _send_frames(websocket, conn, options.coalesce_seconds),
                        lambda: _receive_messages(websocket, conn, options.max_filter_items),
                        lambda: _send_heartbeats(conn, options.heartbeat_seconds),
                        lambda: _enforce_close(conn, options.close_grace_seconds),
                    )
            finally:
                CONNECTIONS.dec()
        close = conn.close_requested
        if close is not None and close.code == CloseCode.TRY_AGAIN_LATER:
            SLOW_CLIENTS_CLOSED.inc()
        log.info(
            "client disconnected",
            user_id=identity.user_id,
            connection=conn.id,
            closed_by_server=int(close.code) if close else None,
        )

    return router


async def _catch_up(
    websocket: WebSocket,
    connection: ClientConnection,
    identity: Identity,
    bearer_token: str,
    last_event_id: str,
    hub: Hub,
    audit: AuditLog,
    options: StreamOptions,
) -> None:
    """Send what the client missed (live events meanwhile are held by the connection),
    then the resume status, then release the held live events minus what was replayed."""
    user = None if connection.watch_all else identity.user_id
    latest = hub.latest_events(user)
    try:
        async with asyncio.timeout(options.resume_timeout_seconds):
            plan = await plan_catch_up(
                user,
                last_event_id,
                audit=audit,
                latest=latest,
                max_events=options.resume_max_events,
                bearer_token=bearer_token,
            )
    except TimeoutError:
        plan = CatchUp(
            [],
            "unavailable",
            f"the audit log did not answer within {options.resume_timeout_seconds:g}s; "
            "live events follow",
        )
    sent: set[str] = set()
    for event in plan.events:
        sent.add(event.event_id)
        if connection.wants(event):
            await websocket.send_text(event_frame(event, replayed=True))
    await websocket.send_text(
        resume_frame(
            plan.status, after_event_id=last_event_id, replayed=len(sent), reason=plan.reason
        )
    )
    released = connection.release_held(sent)
    RESUMES.labels(plan.status).inc()
    log.info(
        "client resumed",
        connection=connection.id,
        status=plan.status,
        replayed=len(sent),
        live_held=released,
        reason=plan.reason,
    )


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


async def _send_frames(
    websocket: WebSocket, connection: ClientConnection, coalesce_seconds: float
) -> None:
    while True:
        frame = await connection.next_frame()
        if isinstance(frame, Close):
            await websocket.close(frame.code, frame.reason)
            return
        if coalesce_seconds <= 0:
            await websocket.send_text(frame)
            FRAMES_SENT.inc()
            continue
        # Whatever else arrives within the window goes out in the same message.
        await asyncio.sleep(coalesce_seconds)
        batch = [frame]
        closing: Close | None = None
        while len(batch) < MAX_BATCH_FRAMES:
            more = connection.next_frame_nowait()
            if more is None:
                break
            if isinstance(more, Close):
                closing = more
                break
            batch.append(more)
        await websocket.send_text(batch[0] if len(batch) == 1 else batch_frame(batch))
        FRAMES_SENT.inc(len(batch))
        if closing is not None:
            await websocket.close(closing.code, closing.reason)
            return


async def _receive_messages(
    websocket: WebSocket, connection: ClientConnection, max_filter_items: int
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        parsed = parse_client_message(message.get("text"))
        if isinstance(parsed, Ping):
            connection.offer(pong_frame())
        elif isinstance(parsed, ChangeSubscription):
            if parsed.add and (
                len(connection.task_ids | parsed.task_ids) + len(connection.types | parsed.types)
                > max_filter_items
            ):
                connection.request_close(
                    Close(
                        CloseCode.POLICY_VIOLATION,
                        f"at most {max_filter_items} task ids and types in a filter",
                    )
                )
                continue  # _enforce_close sends the close and ends the connection
            connection.change_subscription(
                add=parsed.add, task_ids=parsed.task_ids, types=parsed.types
            )
            connection.offer(subscribed_frame(connection.task_ids, connection.types))
        elif isinstance(parsed, Malformed):
            connection.offer(parsed.reply)


async def _send_heartbeats(connection: ClientConnection, interval_seconds: float) -> None:
    if interval_seconds <= 0:
        await asyncio.Event().wait()  # no heartbeats: wait to be cancelled with the others
    while True:
        await asyncio.sleep(interval_seconds)
        connection.offer(heartbeat_frame())


async def _enforce_close(connection: ClientConnection, grace_seconds: float) -> None:
    # A client that stopped reading blocks the sender in a send, so it never reaches the
    # close frame: after the grace period the connection is dropped regardless.
    await connection.wait_close_requested()
    await asyncio.sleep(grace_seconds)
