"""Consumer lag from the broker: each group's committed offsets against the partitions'
end offsets (the Kafka admin API), and the depth of a topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from ops_console.lag import LagSample, PartitionLag, app_of_group, partition_lags
from ops_console.ports import ServiceUnavailableError
from taskevents.kafka import KafkaSettings
from taskevents.logging import get_logger

log = get_logger(__name__)

MAX_GROUPS = 100  # a broker shared with many test sessions holds many groups


class KafkaBroker:
    """`kafka`: the client settings (taskevents.kafka: TLS, SASL from KAFKA_* variables)."""

    def __init__(
        self, kafka: KafkaSettings, *, topics: Sequence[str], timeout_seconds: float
    ) -> None:
        self._kafka = kafka
        self._brokers = kafka.brokers
        self._topics = tuple(topics)
        self._timeout = timeout_seconds
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        await self._disconnect()

    async def _disconnect(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def _connected(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            options = self._kafka.client_options()
            admin = AIOKafkaAdminClient(**options, request_timeout_ms=int(self._timeout * 1000))
            consumer = AIOKafkaConsumer(
                **options,
                enable_auto_commit=False,
                request_timeout_ms=int(self._timeout * 1000) + 1000,
            )
            try:
                await admin.start()
                await consumer.start()
            except Exception:
                await consumer.stop()
                await admin.close()
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _ends(self, consumer: AIOKafkaConsumer) -> dict[tuple[str, int], int]:
        partitions = await self._partitions(consumer, self._topics)
        offsets = await consumer.end_offsets(partitions)
        return {(tp.topic, tp.partition): offset for tp, offset in offsets.items()}

    async def _partitions(
        self, consumer: AIOKafkaConsumer, topics: Iterable[str]
    ) -> list[TopicPartition]:
        # A topic created since the last look has no partitions in the cached metadata yet.
        await consumer._client.force_metadata_update()
        found = []
        for topic in topics:
            numbers = consumer.partitions_for_topic(topic) or set()
            found += [TopicPartition(topic, p) for p in sorted(numbers)]
        return found

    async def lag(self, groups: Sequence[str] | None, app_ids: Iterable[str]) -> LagSample:
        apps = list(app_ids)
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout * 3):
                    return await self._lag(groups, apps)
            except Exception as error:
                await self._disconnect()
                raise ServiceUnavailableError(f"kafka at {self._brokers}: {error!r}") from None

    async def _lag(self, groups: Sequence[str] | None, app_ids: list[str]) -> LagSample:
        admin, consumer = await self._connected()
        if groups is None:
            listed = await admin.list_consumer_groups()
            names = sorted(g[0] for g in listed if app_of_group(g[0], app_ids) is not None)
            groups = names[:MAX_GROUPS]
        ends = await self._ends(consumer)
        partitions: list[PartitionLag] = []
        members: dict[str, int] = {}
        members = await self._members(admin, groups)
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items()}
            partitions += partition_lags(group, committed, ends, self._topics)
        return LagSample(at=time.monotonic(), partitions=tuple(partitions), members=members)

    async def _members(self, admin: AIOKafkaAdminClient, groups: Sequence[str]) -> dict[str, int]:
        """Active consumers per group; unknown (empty) when the broker's answer cannot be
        read (aiokafka 0.14 misreads DescribeGroups from Kafka 4)."""
        members: dict[str, int] = {}
        for group in groups:
            try:
                described = await admin.describe_consumer_groups([group])
            except Exception as error:
                log.debug("consumer group not described", group=group, error=repr(error))
                continue
            # DescribeGroupsResponse: groups = [(error, group, state, protocol_type,
            # protocol, members, …)]
            for description in described:
                for entry in description.groups:
                    members[entry[1]] = len(entry[5])
        return members

    async def depth(self, topic: str) -> int:
        async with self._lock:
            try:
                async with asyncio.timeout(self._timeout * 2):
                    _, consumer = await self._connected()
                    partitions = await self._partitions(consumer, [topic])
                    ends = await consumer.end_offsets(partitions)
                    starts = await consumer.beginning_offsets(partitions)
            except Exception as error:
                await self._disconnect()
                raise ServiceUnavailableError(f"kafka at {self._brokers}: {error!r}") from None
        return sum(ends[tp] - starts[tp] for tp in partitions)
