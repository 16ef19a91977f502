"""Waiting is polling with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
    check: Callable[[], None] | None = None,
) -> T:
    """Call `probe` until it returns something truthy and return that. `check` runs on every
    round and should raise when a process the wait depends on has died."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        if check is not None:
            check()
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")
        await asyncio.sleep(interval)


def eventually_sync(
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.5,
    what: str = "condition",
) -> T:
    """`eventually` for a probe that blocks (kubectl, a subprocess): polling with a deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s (last: {last!r})")
        time.sleep(interval)
