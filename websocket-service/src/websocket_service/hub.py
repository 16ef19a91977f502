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

    def __init__(
        self,
        user_id: str,
        *,
        max_queue_frames: int,
        recent_event_ids: int,
        watch_all: bool = False,
        hold: bool = False,
    ) -> None:
        self.id = f"c{next(self._ids)}"
        self.user_id = user_id
        self.watch_all = watch_all
        self.task_ids: frozenset[str] = frozenset()
        self.types: frozenset[str] = frozenset()
        self._max_queue_frames = max_queue_frames
        self._queue: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=max_queue_frames)
        self._recent = RecentIds(recent_event_ids)
        self._close: Close | None = None
        self._close_requested = asyncio.Event()
        # While a resuming client catches up from the audit log, live events wait here
        # (in arrival order) so that they follow the catch-up instead of interleaving.
        self._held: list[tuple[str, str]] | None = [] if hold else None

    @property
    def close_requested(self) -> Close | None:
        return self._close

    @property
    def pending_frames(self) -> int:
        return self._queue.qsize()

    @property
    def holding(self) -> bool:
        return self._held is not None

    def wants(self, event: TaskEvent) -> bool:
        if self.task_ids and event.task_id not in self.task_ids:
            return False
        return not self.types or event.type in self.types

    def change_subscription(
        self, *, add: bool, task_ids: frozenset[str], types: frozenset[str]
    ) -> None:
        if add:
            self.task_ids |= task_ids
            self.types |= types
        else:
            self.task_ids -= task_ids
            self.types -= types

    def offer_event(self, event_id: str, frame: str) -> Offer:
        if self._close is not None:
            return Offer.CLOSING
        if self._held is not None:
            if len(self._held) >= self._max_queue_frames:
                self._too_slow()
                return Offer.OVERFLOW
            self._held.append((event_id, frame))
            return Offer.QUEUED
        if not self._recent.add(event_id):
            return Offer.DUPLICATE
        return self.offer(frame)

    def release_held(self, already_sent: set[str]) -> int:
        """End the catch-up: remember what it sent, then queue the live events that arrived
        meanwhile, except those it sent already. Returns how many were queued."""
        held, self._held = self._held or [], None
        for event_id in already_sent:
            self._recent.add(event_id)
        queued = 0
        for event_id, frame in held:
            if event_id in already_sent:
                continue
            if self.offer_event(event_id, frame) is Offer.QUEUED:
                queued += 1
        return queued

    def offer(self, frame: str) -> Offer:
        if self._close is not None:
            return Offer.CLOSING
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self._too_slow()
            return Offer.OVERFLOW
        return Offer.QUEUED

    def _too_slow(self) -> None:
        self.request_close(
            Close(
                CloseCode.TRY_AGAIN_LATER,
                f"too slow: {self._max_queue_frames} frames waiting; reconnect",
            ),
            discard_pending=True,
        )

    def request_close(self, close: Close, *, discard_pending: bool = False) -> None:
        """Queue a close after the pending frames (or instead of them). The first request
        wins; later ones are ignored."""
        if self._close is not None:
            return
        self._close = close
        self._held = None
        if discard_pending or self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
        self._queue.put_nowait(close)
        self._close_requested.set()

    async def next_frame(self) -> Outgoing:
        return await self._queue.get()

    def next_frame_nowait(self) -> Outgoing | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    async def wait_close_requested(self) -> Close:
        await self._close_requested.wait()
        assert self._close is not None
        return self._close


class Hub:
    def __init__(
        self, *, max_queue_frames: int, recent_event_ids: int, replay_buffer_events: int = 0
    ) -> None:
        self._max_queue_frames = max_queue_frames
        self._recent_event_ids = recent_event_ids
        self._by_user: dict[str, set[ClientConnection]] = {}
        self._watchers: set[ClientConnection] = set()  # admin connections: every user
        self._count = 0
        self._empty = asyncio.Event()
        self._empty.set()
        # The latest events seen, whoever they are for: a resuming client gets from here
        # what the audit log has not stored yet.
        self._latest: deque[TaskEvent] = deque(maxlen=replay_buffer_events or None)
        self._keep_latest = replay_buffer_events > 0

    @property
    def connection_count(self) -> int:
        return self._count

    def connections_of(self, user_id: str) -> frozenset[ClientConnection]:
        return frozenset(self._by_user.get(user_id, ()))

    def refusal(self, user_id: str, *, max_total: int, max_per_user: int) -> Close | None:
        """Why one more connection of this user may not open now, if it may not."""
        if self._count >= max_total:
            return Close(CloseCode.TRY_AGAIN_LATER, "server at its connection limit; retry later")
        if len(self._by_user.get(user_id, ())) >= max_per_user:
            return Close(
                CloseCode.POLICY_VIOLATION,
                f"at most {max_per_user} connections per user; close one first",
            )
        return None

    @contextmanager
    def connect(
        self, user_id: str, *, watch_all: bool = False, hold: bool = False
    ) -> Iterator[ClientConnection]:
        connection = ClientConnection(
            user_id,
            max_queue_frames=self._max_queue_frames,
            recent_event_ids=self._recent_event_ids,
            watch_all=watch_all,
            hold=hold,
        )
        if watch_all:
            self._watchers.add(connection)
        else:
            self._by_user.setdefault(user_id, set()).add(connection)
        self._count += 1
        self._empty.clear()
        try:
            yield connection
        finally:
            self._count -= 1
            if self._count == 0:
                self._empty.set()
            self._watchers.discard(connection)
            connections = self._by_user.get(user_id)
            if connections is not None:
                connections.discard(connection)
                if not connections:
                    del self._by_user[user_id]

    def publish(self, event: TaskEvent) -> FanoutReport:
        if self._keep_latest:
            self._latest.append(event)
        connections = self._by_user.get(event.user_id)
        if not connections and not self._watchers:
            return FanoutReport()
        targets = [c for c in (*(connections or ()), *self._watchers) if c.wants(event)]
        if not targets:
            return FanoutReport()
        frame = event_frame(event)
        offers = [c.offer_event(event.event_id, frame) for c in targets]
        return FanoutReport(
            queued=offers.count(Offer.QUEUED),
            duplicates=offers.count(Offer.DUPLICATE),
            overflowed=offers.count(Offer.OVERFLOW),
        )

    def latest_events(self, user_id: str | None) -> list[TaskEvent]:
        """The remembered latest events of one user (None: of everyone), oldest first."""
        return [e for e in self._latest if user_id is None or e.user_id == user_id]

    def close_all(self, close: Close) -> None:
        for connection in [*self._watchers, *(c for cs in self._by_user.values() for c in cs)]:
            connection.request_close(close)

    async def wait_until_empty(self) -> None:
        await self._empty.wait()
