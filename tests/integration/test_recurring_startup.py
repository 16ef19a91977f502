"""recurring-task-service starts while its database does not answer: it stays up, says it is
not ready and why, answers the API with 503, and once Postgres answers it migrates and
becomes ready — no restart, no crash loop. The app alone (no sidecar: its readiness entry
stays failing and is not what this test is about), against a scratch database reached
through a relay that is not listening at first."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from taskevents_cli.devrun import ManagedProcess
from tests.support.authorization import bearer
from tests.support.cluster import VENV_BIN
from tests.support.stack import ROOT, Stack, free_port, scratch_database
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

APP_ID = "recurring-task-service"
LEDGER = "recurring_schema_migrations"


@contextlib.asynccontextmanager
async def relay(port: int, target_host: str, target_port: int) -> AsyncIterator[None]:
    """Postgres appearing at an address where nothing listened before."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(connect, "127.0.0.1", port)
    async with server:
        yield


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{parts.password}@127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_starts_without_its_database_and_becomes_ready_when_it_answers(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    async with scratch_database(stack, "taskevents_recurring_start") as database_url:
        relay_port = free_port()  # nothing listens there yet: connections are refused
        app_port = free_port()
        url = f"http://127.0.0.1:{app_port}"
        service = ManagedProcess(
            APP_ID,
            [str(VENV_BIN / APP_ID)],
            stack.log_dir / f"{APP_ID}-startup.log",
            env={
                "TASKEVENTS_ENV": "development",
                "DATABASE_URL": with_port(database_url, relay_port),
                "APP_PORT": str(app_port),
                "DAPR_HTTP_PORT": str(free_port()),
                "DAPR_GRPC_PORT": str(free_port()),
                "RECURRING_POLL_SECONDS": "0.5",
            },
        )
        service.start()
        try:

            async def readiness() -> dict[str, Any] | None:
                try:
                    response = await http.get(f"{url}/ready")
                except httpx.TransportError:
                    return None  # not listening yet
                body: dict[str, Any] = response.json()
                return {"status_code": response.status_code, **body}

            async def waiting_for_the_database() -> dict[str, Any] | None:
                ready = await readiness()
                failing = (ready or {}).get("failing", {})
                return ready if "database unavailable" in failing.get("database", "") else None

            unready = await eventually(
                waiting_for_the_database,
                timeout=30,
                what="readiness naming the unreachable database",
                check=service.check_alive,
            )
            assert unready["status_code"] == 503
            assert f"127.0.0.1:{relay_port}/" in unready["failing"]["database"]
            response = await http.get(f"{url}/schedules", headers=bearer("start-user"))
            assert response.status_code == 503
            assert "unavailable" in response.json()["detail"]

            target = urlsplit(database_url)
            assert target.hostname is not None
            assert target.port is not None
            async with relay(relay_port, target.hostname, target.port):

                async def database_ready() -> dict[str, Any] | None:
                    ready = await readiness()
                    return ready if ready and "database" not in ready.get("failing", {}) else None

                await eventually(
                    database_ready,
                    timeout=60,
                    what="the database part of readiness",
                    check=service.check_alive,
                )
                created = await http.post(
                    f"{url}/schedules",
                    json={"task_id": "start-1", "user_id": "start-user", "interval_seconds": 60},
                    headers=bearer("start-user"),
                )
                assert created.status_code == 201, created.text
                assert service.alive
                await asyncio.to_thread(service.stop)
        finally:
            await asyncio.to_thread(service.stop)

        connection = await asyncpg.connect(database_url)
        try:
            versions = await connection.fetch(f"SELECT version FROM {LEDGER} ORDER BY version")  # noqa: S608
        finally:
            await connection.close()
        # Every migration the service ships, applied once it could reach the database.
        shipped = sorted(
            int(path.name.split("_")[0])
            for path in (ROOT / "recurring-task-service" / "migrations").glob("*.sql")
        )
        assert [row["version"] for row in versions] == shipped
