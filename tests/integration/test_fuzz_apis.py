"""Every operation of every service's OpenAPI, fuzzed with schemathesis against the real
services (beside their sidecars, on Postgres and Kafka), as an operator: whatever the
generated request, no answer is a 5xx and no service dies. recurring-task-service is fuzzed
in an instance with a database of its own, dropped afterwards: the schedules the fuzzer
creates would otherwise go on firing into everybody's topic."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck
from schemathesis.core.result import Ok

from taskevents.auth import TokenVerifier
from taskevents.settings import DEVELOPMENT_JWT_SECRET
from tests.conftest import Cluster
from tests.support.cluster import SERVICES, Service, service_spec, start_service
from tests.support.stack import scratch_database

pytestmark = pytest.mark.integration

# Bounded, so the run stays short in `make test`; derandomized, so a failure replays.
EXAMPLES_PER_OPERATION = 20


def operator_headers() -> dict[str, str]:
    from pydantic import SecretStr

    minting = TokenVerifier(SecretStr(DEVELOPMENT_JWT_SECRET), operator_role="operator")
    token = minting.issue("fuzz-operator", ttl_seconds=3600, roles=["operator"]).token
    return {"Authorization": f"Bearer {token}"}


def fuzz(spec: dict[str, Any], base_url: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    """(requests sent, the 5xx answers with what was sent)."""
    schema = schemathesis.openapi.from_dict(spec)
    sent = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"an operation schemathesis cannot read: {result}"
        operation = result.ok()

        @hypothesis.settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def call(case: Any) -> None:
            nonlocal sent
            response = case.call(base_url=base_url, headers=headers, timeout=15)
            sent += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {response.request.url} body={case.body!r:.200}"
                    f" -> {response.status_code} {response.text[:300]}"
                )

        call()
    return sent, failures


@asynccontextmanager
async def fuzzed_instance(cluster: Cluster, app_id: str) -> AsyncIterator[Service]:
    if app_id != "recurring-task-service":
        yield cluster[app_id]
        return
    async with scratch_database(cluster.stack, "fuzz_recurring") as database_url:
        spec, consumer = service_spec(
            cluster.stack, app_id, env={"DATABASE_URL": database_url}, replica=90
        )
        service = await asyncio.to_thread(start_service, cluster.stack, spec, consumer)
        try:
            yield service
        finally:
            service.app.stop()


@pytest.mark.parametrize("app_id", SERVICES)
async def test_no_generated_request_gets_a_server_error(
    cluster: Cluster, http: httpx.AsyncClient, app_id: str
) -> None:
    async with fuzzed_instance(cluster, app_id) as service:
        await fuzz_service(service, http, app_id)


async def fuzz_service(service: Service, http: httpx.AsyncClient, app_id: str) -> None:
    spec = (await http.get(f"{service.url}/openapi.json")).json()
    assert spec["paths"], f"{app_id} publishes no operations"
    sent, failures = await asyncio.to_thread(fuzz, spec, service.url, operator_headers())
    assert sent >= len(spec["paths"])
    assert not failures, "\n".join(failures)
    service.check_alive()
    assert (await http.get(f"{service.url}/health")).status_code == 200
