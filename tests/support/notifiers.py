"""For tests that run a notification-service of their own (own app id, topic subscription,
ledger namespace) beside its own daprd, mailing to an SMTP sink of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx

from taskevents.events import EventType, TaskEvent
from tests.support.authorization import bearer
from tests.support.cluster import Service
from tests.support.kafka import DLQ_TOPIC
from tests.support.mailbox import Sink
from tests.support.stack import Stack, free_port
from tests.support.waiting import eventually


@asynccontextmanager
async def own_sink(stack: Stack, name: str) -> AsyncIterator[Sink]:
    """An SMTP sink on a free port, storing under the session's logs; the test may stop it."""
    directory = stack.log_dir / name / "mail"
    directory.mkdir(parents=True, exist_ok=True)
    sink = Sink(port=free_port(), directory=directory)
    sink.start()
    try:
        await sink.wait_accepting()
        yield sink
    finally:
        sink.stop()


def subscription(app_id: str, topic: str) -> dict[str, Any]:
    """The Subscription of a test notifier: the service's route, the dead-letter topic."""
    return {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": f"{app_id}-events"},
        "spec": {
            "pubsubname": "kafka-pubsub",
            "topic": topic,
            "routes": {"default": "/events/task-events"},
            "deadLetterTopic": DLQ_TOPIC,
        },
        "scopes": [app_id],
    }


async def forget_ledger(stack: Stack, namespace: str) -> None:
    """The ledger rows of a test notifier's own namespace (nothing else uses it)."""
    connection = await asyncpg.connect(stack.database_url)
    try:
        await connection.execute("DELETE FROM notification_ledger WHERE namespace = $1", namespace)
    finally:
        await connection.close()


async def wait_until_mailing(
    publish: Callable[[TaskEvent], Awaitable[None]], sink: Sink, service: Service, name: str
) -> None:
    """A test notifier's consumer starts at the newest offset once it has joined its group:
    publish probes until one is mailed."""
    address = f"probe-{name}@example.com"

    async def mailed() -> bool:
        if sink.mails_to(address):
            return True
        probe = TaskEvent.create(
            EventType.TASK_CREATED, task_id=f"probe-{name}", user_id=f"probe-{name}",
            payload={"title": "probe", "user_email": address},
        )  # fmt: skip
        await publish(probe)
        return False

    await eventually(
        mailed, timeout=90, interval=2.0, what="the own notifier consuming",
        check=service.check_alive,
    )  # fmt: skip


async def history(url: str, user_id: str) -> list[dict[str, Any]]:
    """GET /notifications of a notifier at `url`, as the user."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(
            f"{url}/notifications", params={"user_id": user_id}, headers=bearer(user_id)
        )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items
