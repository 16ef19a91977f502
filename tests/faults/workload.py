"""What runs against the system while the faults strike: the demo stream published through
the task app's sidecar (retried until accepted, as a task app would), recurring schedules
that fire every few seconds, WebSocket clients that reconnect with resume when cut, and a
monitor of every consumer group's lag."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import websockets
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from taskevents.events import EventType, TaskEvent
from taskevents_cli.demo import DemoStream
from tests.faults.system import Replica, System
from tests.support.live_stream import hs_token
from tests.support.waiting import eventually

TOPIC = "task-events"
PUBLISH_GIVE_UP_SECONDS = 180.0


@dataclass
class Published:
    event_id: str
    type: str
    task_id: str
    user_id: str
    at: float  # wall clock when the publish was accepted


@dataclass
class Stream:
    system: System
    users: int
    seed: int
    rate: float
    prefix: str
    published: list[Published] = field(default_factory=list)
    publish_failures: int = 0
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        assert self.system.publisher is not None
        port = self.system.publisher.service.dapr_http_port
        url = f"http://127.0.0.1:{port}/v1.0/publish/kafka-pubsub/{TOPIC}"
        headers = {"dapr-api-token": self.system.stack.dapr_api_token}
        demo = DemoStream(users=self.users, seed=self.seed, user_prefix=self.prefix)
        async with httpx.AsyncClient(timeout=15.0, headers=headers) as http:
            for event in demo:
                if self.stopped.is_set():
                    return
                began = time.monotonic()
                body = event.to_json().encode()
                params = {
                    "metadata.partitionKey": event.task_id,
                    "metadata.cloudevent.id": event.event_id,
                }
                give_up = began + PUBLISH_GIVE_UP_SECONDS
                while True:
                    try:
                        response = await http.post(
                            url,
                            content=body,
                            params=params,
                            headers={"content-type": "application/json"},
                        )
                        if response.status_code < 300:
                            break
                    except httpx.HTTPError:
                        pass
                    self.publish_failures += 1
                    if time.monotonic() > give_up:
                        raise RuntimeError(f"publishing {event.event_id} failed for 3 minutes")
                    await asyncio.sleep(0.5)  # back-off before the task app tries again
                self.published.append(
                    Published(
                        event.event_id, str(event.type), event.task_id, event.user_id, time.time()
                    )
                )
                await asyncio.sleep(max(0.0, 1.0 / self.rate - (time.monotonic() - began)))


@dataclass
class WsClient:
    """One user's client: connects to a websocket replica, and when cut reconnects to one
    (round robin) with the last event id it saw."""

    system: System
    user_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, Any]] = field(default_factory=list)
    connections: int = 0
    welcomed: int = 0  # the number of the last connection that got its welcome
    connected_once: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    socket: Any = None

    async def run(self) -> None:
        turn = 0
        while not self.stopped.is_set():
            replicas = self.system.of("ws")
            replica = replicas[turn % len(replicas)]
            turn += 1
            query: dict[str, str] = {"token": hs_token(self.user_id)}
            if self.events:
                query["last_event_id"] = self.events[-1]["event_id"]
            url = f"ws://127.0.0.1:{replica.service.app.spec.app_port}/ws?" + str(
                httpx.QueryParams(query)
            )
            try:
                async with websockets.connect(url, open_timeout=10, max_size=2**24) as socket:
                    self.socket = socket
                    self.connections += 1
                    async for message in socket:
                        frame = json.loads(message)
                        frames = frame["frames"] if frame["kind"] == "batch" else [frame]
                        for one in frames:
                            if one["kind"] == "event":
                                self.events.append(one["event"])
                            elif one["kind"] == "resume":
                                self.resumes.append(one)
                            elif one["kind"] == "welcome":
                                self.welcomed = self.connections
                                self.connected_once.set()
            except (OSError, ConnectionClosed, InvalidStatus, InvalidHandshake, TimeoutError):
                pass
            self.socket = None
            if not self.stopped.is_set():
                await asyncio.sleep(0.5)  # back-off before reconnecting, as a browser would

    @property
    def live(self) -> bool:
        """Connected, and welcomed on this connection: events published now reach it."""
        return self.socket is not None and self.welcomed == self.connections

    async def cut(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.socket.close()


async def create_schedules(
    system: System, prefix: str, count: int, interval: int, occurrences: int
) -> list[dict[str, Any]]:
    replica = system.of("recurring")[0]
    starts = datetime.now(UTC) + timedelta(seconds=5)
    made = []
    async with httpx.AsyncClient(timeout=15.0) as http:
        for i in range(count):
            user = f"{prefix}-{i}"
            body = {
                "task_id": f"recurring-{prefix}-{i}",
                "user_id": user,
                "interval_seconds": interval,
                "starts_at": starts.isoformat(),
                "max_count": occurrences,
                "payload": {"title": f"Recurring {i}", "user_email": f"{user}@example.com"},
            }
            response = await http.post(
                f"{replica.url}/schedules",
                json=body,
                headers={"authorization": f"Bearer {hs_token(user)}"},
            )
            response.raise_for_status()
            made.append({**body, "id": response.json()["id"]})
    return made


async def set_preferences(system: System, prefix: str, users: int) -> None:
    replica = system.of("notify")[0]
    async with httpx.AsyncClient(timeout=15.0) as http:
        for i in range(users):
            user = f"{prefix}-{i}"
            response = await http.put(
                f"{replica.url}/preferences/{user}",
                json={
                    "email": f"{user}@example.com",
                    "phone": f"+1555{i:07d}",
                    "channels": ["email", "sms"],
                },
                headers={"authorization": f"Bearer {hs_token(user)}"},
            )
            response.raise_for_status()


@dataclass
class LagSample:
    at: float
    group: str
    partition: int
    lag: int


@dataclass
class LagMonitor:
    brokers: str
    system: System
    samples: list[LagSample] = field(default_factory=list)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stopped.is_set():
            with contextlib.suppress(Exception):
                ends = await end_offsets(self.brokers)
                async with admin_client(self.brokers) as admin:
                    for group in self.system.groups:
                        offsets = await admin.list_consumer_group_offsets(group)
                        now = time.time()
                        for tp, end in ends.items():
                            committed = offsets.get(tp)
                            done = committed.offset if committed is not None else 0
                            self.samples.append(LagSample(now, group, tp.partition, end - done))
            await asyncio.sleep(1.0)  # the sampling period

    async def caught_up(self, targets: dict[TopicPartition, int]) -> bool:
        """Whether every group has committed every partition up to `targets`."""
        async with admin_client(self.brokers) as admin:
            for group in self.system.groups:
                offsets = await admin.list_consumer_group_offsets(group)
                for tp, target in targets.items():
                    committed = offsets.get(tp)
                    if target > 0 and (committed is None or committed.offset < target):
                        return False
        return True


@contextlib.asynccontextmanager
async def admin_client(brokers: str) -> Any:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers, request_timeout_ms=5000)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def end_offsets(brokers: str, topic: str = TOPIC) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=brokers, request_timeout_ms=5000)
    try:
        await consumer.start()
        partitions = [TopicPartition(topic, p) for p in range(6)]
        offsets: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return offsets
    finally:
        await consumer.stop()


def ws_replica_names(replicas: list[Replica]) -> list[str]:
    return [r.name for r in replicas]


async def replay_dead_letters(system: System, *, rounds: int = 5) -> int:
    """What an operator does after an outage: replay every new dead letter (bulk replay of
    the audit log's API), until none is left or `rounds` calls were made."""
    audit = system.of("audit")[0]
    headers = {"authorization": f"Bearer {hs_token('faults-operator', roles=['operator'])}"}
    total = 0
    async with httpx.AsyncClient(timeout=60.0, headers=headers) as http:
        for _ in range(rounds):
            response = await http.post(f"{audit.url}/audit/dead-letters/replay", json={})
            response.raise_for_status()
            replayed = response.json()["replayed"]
            total += len(replayed)
            if not replayed:
                break
    return total


async def refused_notification(system: System, client: WsClient) -> str:
    """A dead letter an operator's replay must bring back to one app only: a valid
    `task.created` of `client`'s user (who has no preferences) whose address
    notification-service refuses for good, so that it dead-letters the event itself, then a
    later event of the same task. Once the client has both and the letter is filed, the
    client is cut and comes back with resume — a client that already had the event when the
    replay arrives. Returns the refused event's id."""
    assert system.publisher is not None
    port = system.publisher.service.dapr_http_port
    url = f"http://127.0.0.1:{port}/v1.0/publish/kafka-pubsub/{TOPIC}"
    task_id = f"task-{client.user_id}"
    events = [
        TaskEvent.create(
            EventType.TASK_CREATED,
            task_id=task_id,
            user_id=client.user_id,
            payload={"title": "Refused address", "user_email": "not-an-address"},
        ),
        TaskEvent.create(EventType.TASK_UPDATED, task_id=task_id, user_id=client.user_id),
    ]
    headers = {"dapr-api-token": system.stack.dapr_api_token}

    async def live() -> bool:
        return client.live

    # A client with no events yet reconnects without resume: it must be there when they go.
    await eventually(live, timeout=60, what="the refused user's client connected")
    async with httpx.AsyncClient(timeout=15.0, headers=headers) as http:
        for event in events:
            response = await http.post(
                url,
                content=event.to_json().encode(),
                params={
                    "metadata.partitionKey": event.task_id,
                    "metadata.cloudevent.id": event.event_id,
                },
                headers={"content-type": "application/json"},
            )
            response.raise_for_status()
        ids = {e.event_id for e in events}

        async def received() -> bool:
            return ids <= {str(e["event_id"]) for e in client.events}

        await eventually(received, timeout=60, what="the refused event at its client")
        audit = system.of("audit")[0]
        operator = {"authorization": f"Bearer {hs_token('faults-operator', roles=['operator'])}"}

        async def filed() -> bool:
            response = await http.get(
                f"{audit.url}/audit/dead-letters",
                params={"type": "task.created", "limit": 100},
                headers=operator,
            )
            return response.is_success and any(
                i["event_id"] == events[0].event_id and i["app"] == "notification-service"
                for i in response.json()["items"]
            )

        await eventually(filed, timeout=60, what="notification-service's dead letter")
    connections = client.connections
    await client.cut()

    async def back() -> bool:
        return client.connections > connections and client.live

    await eventually(back, timeout=60, what="the client back after the cut")
    return events[0].event_id
