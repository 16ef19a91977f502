"""Fixtures for the integration and e2e tiers: the real stack (Kafka, Postgres, SMTP), and
the four services each beside a real daprd, started once per session. Unit tests use none
of them, so `pytest tests/unit` starts nothing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from taskevents.publisher import EventPublisher
from tests.support.cluster import SERVICES, Service, service_spec, start_service
from tests.support.kafka import wait_until_consuming
from tests.support.stack import Stack, ensure_stack


@dataclass
class Cluster:
    services: dict[str, Service]
    cli: Service  # a sidecar with no app, which the tests publish through
    stack: Stack

    def __getitem__(self, app_id: str) -> Service:
        return self.services[app_id]

    def check_alive(self) -> None:
        """Raise with the log of the first sidecar or service that died."""
        for service in [self.cli, *self.services.values()]:
            service.check_alive()


@pytest.fixture(scope="session")
def stack() -> Stack:
    stack = ensure_stack()
    # Every sidecar of the session asks for this token: the Dapr SDK in this process reads it
    # from the environment when it is first imported, the CLI the tests run as a subprocess
    # too. (Importing the SDK here would fix its ports before the cluster knows them.)
    os.environ["DAPR_API_TOKEN"] = stack.dapr_api_token
    return stack


@pytest_asyncio.fixture(scope="session")
async def cluster(stack: Stack) -> AsyncIterator[Cluster]:
    started: list[Service] = []
    try:
        spec, consumer = service_spec(stack, "taskevents-cli", with_app=False)
        cli = start_service(stack, spec, consumer)
        started.append(cli)
        # The Dapr SDK reads the sidecar ports from the environment when it is imported; its
        # settings are set too, in case something imported it already.
        os.environ["DAPR_HTTP_PORT"] = str(cli.dapr_http_port)
        os.environ["DAPR_GRPC_PORT"] = str(cli.dapr_grpc_port)
        from dapr.conf import settings as dapr_settings

        dapr_settings.DAPR_HTTP_PORT = cli.dapr_http_port  # type: ignore[attr-defined]
        dapr_settings.DAPR_GRPC_PORT = cli.dapr_grpc_port  # type: ignore[attr-defined]
        dapr_settings.DAPR_API_TOKEN = stack.dapr_api_token  # type: ignore[attr-defined]
        services = {}
        for app_id in SERVICES:
            spec, consumer = service_spec(stack, app_id)
            services[app_id] = start_service(stack, spec, consumer)
            started.append(services[app_id])
        groups = [g for s in services.values() for g in s.consumer_groups]
        await wait_until_consuming(stack.kafka_brokers, groups)
        yield Cluster(services=services, cli=cli, stack=stack)
    finally:
        for service in reversed(started):
            service.app.stop()


@pytest_asyncio.fixture(scope="session")
async def publisher(cluster: Cluster) -> AsyncIterator[EventPublisher]:
    publisher = EventPublisher(
        pubsub_name="kafka-pubsub",
        topic="task-events",
        http_port=cluster.cli.dapr_http_port,
        grpc_port=cluster.cli.dapr_grpc_port,
    )
    yield publisher
    await publisher.close()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        yield client


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A short id unique to this test and session, for task and user ids."""
    from tests.support.stack import RUN_ID

    name = request.node.name.replace("[", "-").replace("]", "")[:30]
    return f"{name}-{RUN_ID}"
