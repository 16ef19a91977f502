"""websocket-service without Dapr, the baseline of bench/websocket_latency.py: the same app
(the same hub, the same WebSocket endpoint and fan-out code, `push_event_to_clients`), fed
by an aiokafka consumer in its own process instead of by daprd.

    BENCH_DIRECT_TOPIC=… BENCH_DIRECT_GROUP=… APP_PORT=… python bench/websocket_direct.py

Not for production: no sidecar, so no resume from the audit log and no readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer

from taskevents.cloudevents import parse_cloud_event
from taskevents.kafka import KafkaSettings
from taskevents.logging import get_logger
from taskevents.web import run_service
from websocket_service.app import create_app
from websocket_service.bootstrap import Services, bootstrap
from websocket_service.handlers import push_event_to_clients
from websocket_service.server import serve_websockets
from websocket_service.settings import APP_ID, Settings

log = get_logger("bench.websocket_direct")


async def consume(services: Services, topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        **KafkaSettings().client_options(),
        group_id=group,
        auto_offset_reset="latest",
        enable_auto_commit=True,
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for records in batches.values():
                for record in records:
                    event = parse_cloud_event(record.value or b"").task_event()
                    await push_event_to_clients(event, fanout=services.hub)
    finally:
        await consumer.stop()


def _exit_when_failed(task: asyncio.Task[None]) -> None:
    """A baseline that stopped consuming must not pass for a slow one."""
    if not task.cancelled() and task.exception() is not None:
        log.error("the direct consumer failed", error=repr(task.exception()))
        os._exit(3)


@contextlib.asynccontextmanager
async def direct_bootstrap(settings: Settings) -> AsyncIterator[Services]:
    """The service's own bootstrap, plus the consumer in place of daprd's deliveries."""
    async with bootstrap(settings) as services:
        task = asyncio.create_task(
            consume(services, os.environ["BENCH_DIRECT_TOPIC"], os.environ["BENCH_DIRECT_GROUP"])
        )
        task.add_done_callback(_exit_when_failed)
        try:
            yield services
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def main() -> None:
    run_service(
        APP_ID,
        Settings,
        lambda settings: create_app(settings, bootstrap=direct_bootstrap),
        server=serve_websockets,
    )


if __name__ == "__main__":
    main()
