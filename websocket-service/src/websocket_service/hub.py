"""In-process fan-out in the broadcaster shape: the hub holds each user's connections, and
each connection a bounded queue of frames that its own sender drains. Publishing never
waits: a connection whose queue is full is closed (1013), the others carry on."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum

from taskevents.events import TaskEvent
from websocket_service.frames import event_frame
from websocket_service.ports import FanoutReport

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: the close frame payload is at most 125 bytes


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008
    TRY_AGAIN_LATER = 1013


def fit_close_reason(reason: str) -> str:
    encoded = reason.encode()
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[:MAX_CLOSE_REASON_BYTES].decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", fit_close_reason(self.reason))


Outgoing = str | Close


class RecentIds:
    """The last `capacity` ids, with constant-time membership."""

    def __init__(self, capacity: int) -> None:
        self._order: deque[str] = deque()
        self._members: set[str] = set()
        self._capacity = capacity

    def add(self, item: str) -> bool:
        """Remember `item`; False when it was already remembered."""
        if item in self._members:
            return False
        if len(self._order) >= self._capacity:
            self._members.discard(self._order.popleft())
        self._order.append(item)
        self._members.add(item)
        return True

    def __len__(self) -> int:
        return len(self._order)


class Offer(IntEnum):
    QUEUED = 1
    DUPLICATE = 2
    OVERFLOW = 3
    CLOSING = 4


class ClientConnection:
    _ids = itertools.count(1)

    def __init__(self, user_id: str, *, max_queue_frames: int, recent_event_ids: int) -> None:
        self.id = f"c{next(self._ids)}"
        self.user_id = user_id
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=max_queue_frames)
        self._recent = RecentIds(recent_event_ids)
        self._close: Close | None = None
        self._close_requested = asyncio.Event()

    @property
    def close_requested(self) -> Close | None:
        return self._close

    @property
    def pending_frames(self) -> int:
        return self._queue.qsize()

    def offer_event(self, event_id: str, frame: str) -> Offer:
        if self._close is not None:
            return Offer.CLOSING
        if not self._recent.add(event_id):
            return Offer.DUPLICATE
        return self.offer(frame)

    def offer(self, frame: str) -> Offer:
        if self._close is not None:
            return Offer.CLOSING
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.request_close(
                Close(
                    CloseCode.TRY_AGAIN_LATER,
                    f"too slow: {self._queue.maxsize} frames waiting; reconnect",
                ),
                discard_pending=True,
            )
            return Offer.OVERFLOW
        return Offer.QUEUED

    def request_close(self, close: Close, *, discard_pending: bool = False) -> None:
        """Queue a close after the pending frames (or instead of them). The first request
        wins; later ones are ignored."""
        if self._close is not None:
            return
        self._close = close
        if discard_pending or self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(close)
        self._close_requested.set()

    async def next_frame(self) -> Outgoing:
        return await self._queue.get()

    async def wait_close_requested(self) -> Close:
        await self._close_requested.wait()
        assert self._close is not None
        return self._close


class Hub:
    def __init__(self, *, max_queue_frames: int, recent_event_ids: int) -> None:
        self._max_queue_frames = max_queue_frames
        self._recent_event_ids = recent_event_ids
        self._by_user: dict[str, set[ClientConnection]] = {}
        self._count = 0
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def connection_count(self) -> int:
        return self._count

    def connections_of(self, user_id: str) -> frozenset[ClientConnection]:
        return frozenset(self._by_user.get(user_id, ()))

    @contextmanager
    def connect(self, user_id: str) -> Iterator[ClientConnection]:
        connection = ClientConnection(
            user_id,
            max_queue_frames=self._max_queue_frames,
            recent_event_ids=self._recent_event_ids,
        )
        self._by_user.setdefault(user_id, set()).add(connection)
        self._count += 1
        self._empty.clear()
        try:
            yield connection
        finally:
            self._count -= 1
            if self._count == 0:
                self._empty.set()
            connections = self._by_user.get(user_id)
            if connections is not None:
                connections.discard(connection)
                if not connections:
                    del self._by_user[user_id]

    def publish(self, event: TaskEvent) -> FanoutReport:
        connections = self._by_user.get(event.user_id)
        if not connections:
            return FanoutReport()
        frame = event_frame(event)
        offers = [c.offer_event(event.event_id, frame) for c in list(connections)]
        return FanoutReport(
            queued=offers.count(Offer.QUEUED),
            duplicates=offers.count(Offer.DUPLICATE),
            overflowed=offers.count(Offer.OVERFLOW),
        )

    def close_all(self, close: Close) -> None:
        for connections in list(self._by_user.values()):
            for connection in list(connections):
                connection.request_close(close)

    async def wait_until_empty(self) -> None:
        await self._empty.wait()
