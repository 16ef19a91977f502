"""The fault schedule: every fault of the issue, in an order drawn from a seed that is printed
(and saved with the results), so that a failing run can be replayed with --fault-seed."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import AIOKafkaProducer

from tests.faults.infra import OwnInfra
from tests.faults.system import ROLES, System
from tests.faults.workload import TOPIC, LagMonitor, end_offsets
from tests.support.waiting import eventually

T = TypeVar("T")
log = logging.getLogger(__name__)

RECOVERY_BOUND_SECONDS = 90.0  # every consumer group back to the end offsets after a fault
POSTGRES_DOWN_SECONDS = 20.0


@dataclass
class FaultRecord:
    name: str
    started: float
    ended: float = 0.0  # the failed part is back
    recovered: float = 0.0  # every group caught up with what was published until `ended`
    detail: dict[str, object] = field(default_factory=dict)

    @property
    def recovery_seconds(self) -> float:
        return self.recovered - self.ended if self.recovered else float("inf")


def fault_names(seed: int, *, soak: bool) -> list[str]:
    names = [f"kill-app:{r}" for r in ROLES] + [f"kill-daprd:{r}" for r in ROLES]
    names += ["kafka-restart", "postgres-stop", "smtp-down+rebalance", "poison"]
    random.Random(seed).shuffle(names)
    return names


@dataclass
class Faults:
    infra: OwnInfra
    system: System
    monitor: LagMonitor
    seed: int
    smtp_down_seconds: float
    poison_partition: int = 0
    records: list[FaultRecord] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def strike(self, name: str) -> FaultRecord:
        record = FaultRecord(name, time.time())
        log.warning("fault %s", name)
        kind, _, role = name.partition(":")
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "kill-app": lambda: self._kill(role, "app", record),
            "kill-daprd": lambda: self._kill(role, "daprd", record),
            "kafka-restart": self._kafka_restart,
            "postgres-stop": self._postgres_stop,
            "smtp-down+rebalance": lambda: self._smtp_down(record),
            "poison": lambda: self._poison(record),
        }
        await actions[kind]()
        record.ended = time.time()
        targets = await _retrying(lambda: end_offsets(self.infra.brokers))

        async def caught_up() -> bool:
            try:
                return await self.monitor.caught_up(targets)
            except Exception:
                return False

        try:
            await eventually(caught_up, timeout=RECOVERY_BOUND_SECONDS, interval=0.5)
            record.recovered = time.time()
        except TimeoutError:
            record.recovered = 0.0
        log.warning(
            "%s: back after %.1fs, consumers caught up %.1fs later",
            name,
            record.ended - record.started,
            record.recovery_seconds,
        )
        self.records.append(record)
        return record

    async def _kill(self, role: str, part: str, record: FaultRecord) -> None:
        replica = self.rng.choice(self.system.of(role))
        record.detail["replica"] = replica.name
        process = replica.app if part == "app" else replica.sidecar
        await asyncio.to_thread(process.kill)
        # A restarted pod: the same process again, on the same ports.
        await asyncio.to_thread(process.start)
        await asyncio.to_thread(replica.service.app.wait_ready, 120)

    async def _kafka_restart(self) -> None:
        await asyncio.to_thread(self.infra.kafka_stop)
        await asyncio.to_thread(self.infra.kafka_start)

    async def _postgres_stop(self) -> None:
        await asyncio.to_thread(self.infra.postgres_stop)
        await asyncio.sleep(POSTGRES_DOWN_SECONDS)  # the length of the outage
        await asyncio.to_thread(self.infra.postgres_start)

    async def _smtp_down(self, record: FaultRecord) -> None:
        """SMTP down; while notification-service's handlers retry, a third replica joins its
        group and leaves it again (a rebalance mid-retry)."""
        await asyncio.to_thread(self.infra.smtp_stop)
        down_until = time.monotonic() + self.smtp_down_seconds
        extra_number = max(r.number for r in self.system.replicas) + 1
        extra = await asyncio.to_thread(self.system.start, "notify", extra_number)
        record.detail["added"] = extra.name
        await asyncio.sleep(max(2.0, (down_until - time.monotonic()) / 2))  # mid-outage
        await asyncio.to_thread(self.system.remove, extra)
        await asyncio.sleep(max(0.0, down_until - time.monotonic()))  # the rest of the outage
        await asyncio.to_thread(self.infra.smtp_start)

    async def _poison(self, record: FaultRecord) -> None:
        """A message no consumer can read, on one partition, with a key of its own."""
        key = f"poison-{self.seed}-{len(self.records)}"
        value = json.dumps(
            {
                "specversion": "1.0",
                "id": key,
                "source": "faults",
                "type": "com.dapr.event.sent",
                "datacontenttype": "application/json",
                "data": {"event_id": key, "type": "task.created", "schema_version": "x"},
            }
        ).encode()
        producer = AIOKafkaProducer(bootstrap_servers=self.infra.brokers)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                TOPIC, value, key=key.encode(), partition=self.poison_partition
            )
        finally:
            await producer.stop()
        record.detail.update(key=key, partition=sent.partition, offset=sent.offset)


async def _retrying(call: Callable[[], Awaitable[T]], *, timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
