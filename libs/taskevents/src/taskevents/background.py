"""Work a service runs beside its requests (migrations that wait for the database, a key
from the secret store, a maintenance loop), owned by the lifespan: started in a bootstrap,
cancelled and awaited when the bootstrap's exit stack closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any


def in_background(
    stack: AsyncExitStack, work: Coroutine[Any, Any, None], *, name: str
) -> asyncio.Task[None]:
    """Run `work` as a task that the exit of `stack` cancels and waits for."""
    task = asyncio.create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    return task
