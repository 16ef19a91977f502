"""Direct Kafka access for the harness: probe messages that tell when a consumer group is
really consuming, and reading what landed on a topic (the dead-letter topic). `brokers` is a
broker list (the other client settings from the environment: taskevents.kafka) or the whole
KafkaSettings, e.g. of a SASL_SSL broker."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from taskevents.kafka import KafkaSettings, kafka_client_options
from tests.support.waiting import eventually

Brokers = str | KafkaSettings

TOPIC = "task-events"
DLQ_TOPIC = "task-events-dlq"
PROBE_TYPE = "taskevents.probe"
POLL_SECONDS = 0.25


def cloud_event(data: Any, *, event_id: str | None = None, topic: str = TOPIC) -> bytes:
    """A CloudEvent as daprd would have published it."""
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id or str(uuid.uuid4()),
            "source": "taskevents-tests",
            "type": "com.dapr.event.sent",
            "datacontenttype": "application/json",
            "topic": topic,
            "pubsubname": "kafka-pubsub",
            "time": datetime.now(UTC).isoformat(),
            "data": data,
        }
    ).encode()


def probe_data() -> dict[str, Any]:
    return {
        "event_id": f"probe-{uuid.uuid4()}",
        "type": PROBE_TYPE,
        "task_id": "probe",
        "user_id": "probe",
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {},
    }


async def wait_until_consuming(
    brokers: Brokers,
    groups: Iterable[str],
    *,
    timeout: float = 90.0,
    every_partition: bool = False,
) -> None:
    """Wait until every consumer group has consumed and committed a probe published after
    the call started: only then are messages published from now on sure to reach it.
    `every_partition`: a probe on each partition, each committed by every group — a group
    with no committed offset on a partition starts it at its initialOffset again when its
    sidecar restarts (websocket-pubsub: the newest, skipping what came meanwhile)."""
    if every_partition:
        for partition in range(6):
            await _committed_everywhere(brokers, set(groups), partition, timeout=timeout)
        return
    pending = set(groups)
    deadline = time.monotonic() + timeout
    producer = AIOKafkaProducer(**kafka_client_options(brokers))
    admin = AIOKafkaAdminClient(**kafka_client_options(brokers))
    await producer.start()
    await admin.start()
    try:
        partition = 0
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"consumer groups never caught up with a probe: {sorted(pending)}"
                )
            sent = await producer.send_and_wait(
                TOPIC, cloud_event(probe_data()), key=b"probe", partition=partition
            )
            tp = TopicPartition(TOPIC, sent.partition)
            partition = (partition + 1) % 6
            settle = time.monotonic() + 4.0
            while time.monotonic() < settle and pending:
                for group in list(pending):
                    offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
                    committed = offsets.get(tp)
                    if committed is not None and committed.offset > sent.offset:
                        pending.discard(group)
                await asyncio.sleep(POLL_SECONDS)
    finally:
        await producer.stop()
        await admin.close()


async def _committed_everywhere(
    brokers: Brokers, groups: set[str], partition: int, *, timeout: float
) -> None:
    """Publish a probe on `partition` and wait until every group committed past it."""
    producer = AIOKafkaProducer(**kafka_client_options(brokers))
    admin = AIOKafkaAdminClient(**kafka_client_options(brokers))
    await producer.start()
    await admin.start()
    try:
        sent = await producer.send_and_wait(
            TOPIC, cloud_event(probe_data()), key=b"probe", partition=partition
        )
        tp = TopicPartition(TOPIC, sent.partition)

        async def committed() -> bool:
            for group in list(groups):
                offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
                found = offsets.get(tp)
                if found is not None and found.offset > sent.offset:
                    groups.discard(group)
            return not groups

        await eventually(committed, timeout=timeout, interval=POLL_SECONDS, what=f"commits on {tp}")
    finally:
        await producer.stop()
        await admin.close()


async def end_offsets(brokers: Brokers, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(**kafka_client_options(brokers))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            partitions = [TopicPartition(topic, p) for p in range(6)]
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return offsets
    finally:
        await consumer.stop()


async def read_from(
    brokers: Brokers, start: dict[TopicPartition, int], *, until: float = 2.0
) -> list[dict[str, Any]]:
    """Every message after `start` (parsed JSON, with its Kafka coordinates), reading for
    `until` seconds after the last message arrived."""
    consumer = AIOKafkaConsumer(**kafka_client_options(brokers), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        messages: list[dict[str, Any]] = []
        while True:
            batch = await consumer.getmany(timeout_ms=int(until * 1000))
            if not batch:
                return messages
            for tp, records in batch.items():
                for record in records:
                    try:
                        body = json.loads(record.value or b"null")
                    except json.JSONDecodeError:
                        body = {"raw": (record.value or b"").decode(errors="replace")}
                    messages.append(
                        {
                            "partition": tp.partition,
                            "offset": record.offset,
                            "key": (record.key or b"").decode(errors="replace"),
                            "headers": {k: v.decode(errors="replace") for k, v in record.headers},
                            "body": body,
                        }
                    )
    finally:
        await consumer.stop()


async def produce_raw(
    brokers: Brokers,
    value: bytes,
    *,
    key: str,
    topic: str = TOPIC,
    headers: Mapping[str, str] | None = None,
) -> None:
    producer = AIOKafkaProducer(**kafka_client_options(brokers))
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            value,
            key=key.encode(),
            headers=[(k, v.encode()) for k, v in (headers or {}).items()] or None,
        )
    finally:
        await producer.stop()
