"""The ops console beside a sidecar of its own, watching the session's cluster: its
sidecars, its consumer groups (and any more a test names), the session's logs."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import jwt
from aiokafka import AIOKafkaConsumer

from taskevents.events import EventType, TaskEvent
from taskevents.settings import DEVELOPMENT_JWT_SECRET
from tests.conftest import Cluster
from tests.support.cluster import Service, service_spec, start_service
from tests.support.kafka import DLQ_TOPIC, TOPIC, cloud_event, produce_raw
from tests.support.stack import Stack
from tests.support.waiting import eventually

SAMPLE_SECONDS = 1.0


def target(service: Service) -> dict[str, str | None]:
    spec = service.app.spec
    return {
        "app_id": service.app_id,
        "dapr_http_url": f"http://127.0.0.1:{spec.dapr_http_port}",
        "metrics_url": f"http://127.0.0.1:{spec.metrics_port}/",
        "app_url": service.url if spec.app_port else None,
        "consumer_group": service.consumer_groups[0] if service.consumer_groups else None,
    }


@contextmanager
def running_console(
    stack: Stack, cluster: Cluster, extra_groups: Iterable[str]
) -> Iterator[Service]:
    """The console watching the session's cluster (its sidecars and consumer groups) and
    `extra_groups`, stopped at the end."""
    service = start_console(stack, [cluster.cli, *cluster.services.values()], extra_groups)
    try:
        yield service
    finally:
        service.app.stop()


def start_console(stack: Stack, watched: Iterable[Service], extra_groups: Iterable[str]) -> Service:
    watched = list(watched)
    spec, consumer = service_spec(stack, "ops-console")
    itself = {
        "app_id": "ops-console",
        "dapr_http_url": f"http://127.0.0.1:{spec.dapr_http_port}",
        "metrics_url": f"http://127.0.0.1:{spec.metrics_port}/",
        "app_url": f"http://127.0.0.1:{spec.app_port}",
    }
    groups = [g for s in watched for g in s.consumer_groups if s.app.spec.app_port]
    spec.env |= {
        "CONSOLE_TARGETS": json.dumps([*map(target, watched), itself]),
        "CONSOLE_CONSUMER_GROUPS": json.dumps([*groups, *extra_groups]),
        "CONSOLE_KAFKA_BROKERS": stack.kafka_brokers,
        "CONSOLE_SAMPLE_SECONDS": str(SAMPLE_SECONDS),
        "CONSOLE_LOG_DIR": str(stack.log_dir),
    }
    return start_service(stack, spec, consumer)


def operator_token(user_id: str = "console-operator") -> str:
    """What the development login hands out (websocket-service signs it with the same key)."""
    claims = {
        "sub": user_id,
        "roles": ["operator"],
        "exp": datetime.now(UTC) + timedelta(hours=1),
    }
    return jwt.encode(claims, DEVELOPMENT_JWT_SECRET, algorithm="HS256")


async def stop_a_consumer_group(brokers: str, group: str) -> None:
    """A group that consumed task-events up to now, committed, and stopped: from here on
    its lag grows with every event published."""
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=brokers, group_id=group,
        auto_offset_reset="latest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    try:

        async def assigned() -> bool:
            if not consumer.assignment():
                await consumer.getmany(timeout_ms=500)
            return bool(consumer.assignment())

        await eventually(assigned, what=f"partitions assigned to {group}")
        await consumer.seek_to_end()
        await consumer.commit({tp: await consumer.position(tp) for tp in consumer.assignment()})
    finally:
        await consumer.stop()


async def make_dead_letter(brokers: str, task_id: str, user_id: str) -> TaskEvent:
    """A valid event put on the dead-letter topic the way daprd moves one there after its
    retries (the original CloudEvent, unchanged) — an event the audit log has not stored,
    so a replay is what brings it into the audit log."""
    event = TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id, payload={"title": "dead letter"}
    )
    message = cloud_event(event.model_dump(mode="json"), event_id=event.event_id, topic=TOPIC)
    await produce_raw(brokers, message, key=task_id, topic=DLQ_TOPIC)
    return event
