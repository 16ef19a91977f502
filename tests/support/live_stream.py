"""websocket-service tests' own small cluster (a publishing sidecar, audit-log-service and
websocket-service replicas, each app beside its own daprd) and a WebSocket client that
collects frames. The replicas are numbered from 50 so that their resources and consumer
groups never meet the session cluster's; the audit log has an app-id of its own, so that the
replicas' resumes (Dapr service invocation by app-id) reach this audit log, configured for
their tokens, and never another audit-log-service on this machine."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import websockets
import yaml
from websockets.exceptions import ConnectionClosed

from taskevents.publisher import EventPublisher
from taskevents.settings import DEVELOPMENT_JWT_SECRET
from taskevents_cli.devrun import AppSpec, ProcessDiedError, start_app
from tests.support.cluster import COMPONENTS, VENV_BIN, Service, daprd_env, service_spec
from tests.support.kafka import wait_until_consuming
from tests.support.stack import RUN_ID, Stack
from tests.support.waiting import eventually

FIRST_REPLICA = 50
START_ATTEMPTS = 3
AUDIT_APP_ID = f"audit-live-{RUN_ID}"


def audit_subscriptions(app_id: str) -> list[dict[str, Any]]:
    """audit-log-service's own subscriptions, for the same service under another app-id."""
    source = COMPONENTS / "subscriptions" / "audit-log-service.yaml"
    documents = [d for d in yaml.safe_load_all(source.read_text()) if d]
    for document in documents:
        document["metadata"]["name"] += "-live"
        document["scopes"] = [app_id]
    return documents


def hs_token(user_id: str, *, secret: str = DEVELOPMENT_JWT_SECRET, **claims: Any) -> str:
    body = {"sub": user_id, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, secret, algorithm="HS256")


def ws_url(service: Service, token: str | None = None, **query: str) -> str:
    params = {**({"token": token} if token else {}), **query}
    base = f"ws://127.0.0.1:{service.app.spec.app_port}/ws"
    return base + ("?" + str(httpx.QueryParams(params)) if params else "")


@dataclass
class Replica:
    service: Service
    group: str
    number: int
    daprd_env: dict[str, str]

    @property
    def spec(self) -> AppSpec:
        return self.service.app.spec


def start_replica(
    stack: Stack,
    app_id: str,
    number: int,
    *,
    env: Mapping[str, str] | None = None,
    extra_daprd_env: Mapping[str, str] | None = None,
    spec: AppSpec | None = None,
    group: str | None = None,
    command: list[str] | None = None,
    extra_resources: list[dict[str, Any]] | None = None,
    role: str | None = None,
) -> Replica:
    """Start (or, given the spec and group of a stopped one, start again on the same ports
    and consumer group, like a restarted pod) one app beside its daprd."""
    fresh_ports = spec is None or group is None
    sidecar_env = {**daprd_env(stack), **(extra_daprd_env or {})}
    for attempt in range(1, START_ATTEMPTS + 1):
        if fresh_ports:
            spec, group = service_spec(
                stack,
                app_id,
                env=dict(env or {}),
                replica=number,
                command=command,
                extra_resources=extra_resources or (),
                role=role,
            )
        assert spec is not None
        assert group is not None
        app = start_app(
            spec,
            daprd=stack.daprd,
            log_dir=stack.log_dir / f"{app_id}-{number}",
            daprd_env=sidecar_env,
        )
        try:
            app.wait_ready()
            return Replica(Service(app, [group]), group, number, dict(sidecar_env))
        except ProcessDiedError as error:
            app.stop()
            # A port picked free a moment ago (ours, or daprd's own internal one) can be
            # taken by another process on a busy machine: try again.
            if "address already in use" not in str(error) or attempt == START_ATTEMPTS:
                raise
        except BaseException:
            app.stop()
            raise
    raise AssertionError("unreachable")


@dataclass
class LiveStack:
    stack: Stack
    publisher: EventPublisher
    audit: Replica
    cli: Replica
    websockets: list[Replica]

    def __getitem__(self, index: int) -> Service:
        return self.websockets[index].service

    def check_alive(self) -> None:
        for replica in [self.cli, self.audit, *self.websockets]:
            replica.service.check_alive()

    def stop(self, index: int) -> None:
        self.websockets[index].service.app.stop()

    def start_again(self, index: int) -> None:
        old = self.websockets[index]
        self.websockets[index] = start_replica(
            self.stack,
            old.spec.app_id,
            old.number,
            spec=old.spec,
            group=old.group,
            extra_daprd_env=old.daprd_env,
        )


@contextmanager
def dapr_sidecar_for_sdk(spec: AppSpec) -> Iterator[None]:
    """The Dapr SDK health-checks the sidecar its settings name (read from the environment
    at import) whenever it makes a client: point them at ours, and back afterwards (the
    session cluster's sidecar stays up for the tests after ours)."""
    ports = {"DAPR_HTTP_PORT": spec.dapr_http_port, "DAPR_GRPC_PORT": spec.dapr_grpc_port}
    saved_env = {name: os.environ.get(name) for name in ports}
    os.environ.update({name: str(port) for name, port in ports.items()})
    sdk_settings = sys.modules["dapr.conf"].settings if "dapr.conf" in sys.modules else None
    saved_sdk = {name: getattr(sdk_settings, name) for name in ports} if sdk_settings else {}
    for name, port in ports.items():
        if sdk_settings is not None:
            setattr(sdk_settings, name, port)
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, value in saved_sdk.items():
            setattr(sdk_settings, name, value)


@asynccontextmanager
async def live_stack(
    stack: Stack,
    websocket_replicas: list[tuple[dict[str, str], dict[str, str]]],
    *,
    audit_env: Mapping[str, str] | None = None,
) -> AsyncIterator[LiveStack]:
    """Each websocket replica is (app env, extra daprd env); `audit_env` configures the
    audit log (its token settings must accept the tokens of the replicas that resume)."""
    started: list[Replica] = []
    try:
        spec, group = service_spec(stack, "taskevents-cli", with_app=False, replica=FIRST_REPLICA)
        cli = start_replica(stack, "taskevents-cli", FIRST_REPLICA, spec=spec, group=group)
        started.append(cli)
        audit = start_replica(
            stack,
            AUDIT_APP_ID,
            FIRST_REPLICA,
            env=audit_env,
            command=[str(VENV_BIN / "audit-log-service")],
            extra_resources=audit_subscriptions(AUDIT_APP_ID),
            # The audit log's configuration (websocket-service may read /audit/events) and
            # topic scopes, under an app-id of its own.
            role="audit-log-service",
        )
        started.append(audit)
        replicas = []
        for offset, (env, sidecar_env) in enumerate(websocket_replicas):
            replica = start_replica(
                stack,
                "websocket-service",
                FIRST_REPLICA + 1 + offset,
                env={"WEBSOCKET_AUDIT_APP_ID": AUDIT_APP_ID, **env},
                extra_daprd_env=sidecar_env,
            )
            started.append(replica)
            replicas.append(replica)
        await wait_until_consuming(stack.kafka_brokers, [r.group for r in (audit, *replicas)])
        publisher = EventPublisher(
            pubsub_name="kafka-pubsub",
            topic="task-events",
            http_port=cli.spec.dapr_http_port,
            grpc_port=cli.spec.dapr_grpc_port,
        )
        live = LiveStack(stack, publisher, audit, cli, replicas)
        try:
            with dapr_sidecar_for_sdk(cli.spec):
                yield live
        finally:
            await publisher.close()
            started = [cli, audit, *live.websockets]
    finally:
        for replica in reversed(started):
            replica.service.app.stop()


@dataclass
class Client:
    """A WebSocket client that collects every frame it receives (batches unpacked)."""

    socket: websockets.ClientConnection
    frames: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    closed_code: int | None = None
    closed_reason: str = ""

    @property
    def events(self) -> list[dict[str, Any]]:
        return [f["event"] for f in self.frames if f["kind"] == "event"]

    @property
    def event_ids(self) -> list[str]:
        return [e["event_id"] for e in self.events]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["kind"] == kind]

    async def collect(self) -> None:
        try:
            async for message in self.socket:
                frame = json.loads(message)
                self.frames.extend(frame["frames"] if frame["kind"] == "batch" else [frame])
        except ConnectionClosed:
            pass
        self.closed_code = self.socket.close_code or 1006
        self.closed_reason = self.socket.close_reason or ""

    async def close(self) -> None:
        await self.socket.close()
        if self.task is not None:
            await self.task


async def connect(url: str, **options: Any) -> Client:
    """Open a client and wait for its welcome (or its close)."""
    client = Client(await websockets.connect(url, open_timeout=30, **options))
    client.task = asyncio.create_task(client.collect())

    async def welcomed() -> bool:
        return bool(client.of_kind("welcome")) or client.closed_code is not None

    await eventually(welcomed, what="welcome frame")
    return client


async def until(condition: Callable[[], object], **options: Any) -> None:
    """`eventually` for a condition that needs no awaiting (frames collected meanwhile)."""

    async def probe() -> bool:
        return bool(condition())

    await eventually(probe, **options)
