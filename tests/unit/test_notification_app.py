"""notification-service's HTTP edge over a bootstrap of fakes: deliveries reach the handler
and its outcome is the answer, the routes reach their ports, the probes report the checks;
and the ledger refuses every call until its schema is migrated."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from notification_service.adapters.postgres import PostgresLedger
from notification_service.app import create_app
from notification_service.bootstrap import Bootstrap, Services
from notification_service.handlers import Policy
from notification_service.ports import HistoryEntry, LedgerUnavailableError
from notification_service.settings import Settings
from taskevents.auth import verifier_from
from taskevents.events import TaskEvent
from taskevents.postgres import PoolSettings, SchemaStatus, create_pool
from taskevents.web import ReadinessCheck
from tests.support.authorization import bearer
from tests.unit.test_notification_handlers import (
    NOTIFYING,
    FakeLedger,
    FakeMailer,
    FakeNotificationLog,
    World,
)

TOKEN = "app-token"
ROUTE = "/events/task-events"


class UnavailableLedger(FakeLedger):
    async def history(
        self, user_id: str, *, since: datetime | None, limit: int
    ) -> list[HistoryEntry]:
        raise LedgerUnavailableError("database down")


def bootstrap_of(world: World, checks: Mapping[str, ReadinessCheck] | None = None) -> Bootstrap:
    @asynccontextmanager
    async def fakes(settings: Settings) -> AsyncIterator[Services]:
        yield Services(
            ports=world.ports(),
            policy=Policy(event_types=NOTIFYING, claim_wait_seconds=0),
            checks=checks or {},
            tokens=verifier_from(settings),
        )

    return fakes


@pytest.fixture
def world() -> World:
    return World(FakeMailer(), FakeNotificationLog())


def client_of(world: World, checks: Mapping[str, ReadinessCheck] | None = None) -> TestClient:
    """A client of the service as user-7, the user of the events and preferences here."""
    settings = Settings(app_api_token=SecretStr(TOKEN))
    return TestClient(
        create_app(settings, bootstrap=bootstrap_of(world, checks)), headers=bearer("user-7")
    )


@pytest.fixture
def client(world: World) -> Iterator[TestClient]:
    with client_of(world) as running:
        yield running


def delivery(event: TaskEvent) -> str:
    return json.dumps(
        {"id": event.event_id, "source": "test", "type": "com.dapr.event.sent",
         "data": event.model_dump(mode="json")}
    )  # fmt: skip


def created() -> TaskEvent:
    return TaskEvent.create(
        "task.created", task_id="task-42", user_id="user-7",
        payload={"title": "Pay rent", "user_email": "ada@example.com"},
    )  # fmt: skip


def test_a_delivered_event_is_mailed_once_however_often_it_comes(
    client: TestClient, world: World
) -> None:
    event = created()
    headers = {"dapr-api-token": TOKEN}

    first = client.post(ROUTE, content=delivery(event), headers=headers)
    again = client.post(ROUTE, content=delivery(event), headers=headers)

    assert first.json() == {"status": "SUCCESS"}
    assert again.json() == {"status": "SUCCESS"}
    assert [mail.event_id for mail in world.mailer.sent] == [event.event_id]


def test_deliveries_without_the_app_token_are_refused(client: TestClient, world: World) -> None:
    response = client.post(ROUTE, content=delivery(created()))

    assert response.status_code == 401
    assert world.mailer.sent == []


def test_preferences_are_stored_read_and_deleted(client: TestClient, world: World) -> None:
    assert client.get("/preferences/user-7").status_code == 404

    put = client.put("/preferences/user-7", json={"email": "pref@example.com"})
    read = client.get("/preferences/user-7")
    deleted = client.delete("/preferences/user-7")

    assert put.status_code == 200
    assert read.json()["email"] == "pref@example.com"
    assert deleted.status_code == 204
    assert world.preferences.stored == {}
    assert client.delete("/preferences/user-7").status_code == 404


def test_the_history_comes_from_the_ledger_and_its_outage_is_a_503(world: World) -> None:
    with client_of(world) as client:
        assert client.get("/notifications", params={"user_id": "user-7"}).json()["items"] == []
    world.ledger = UnavailableLedger()
    with client_of(world) as client:
        response = client.get("/notifications", params={"user_id": "user-7"})
    assert response.status_code == 503
    assert response.json() == {"detail": "ledger unavailable: database down"}


def test_readiness_names_what_does_not_answer(world: World) -> None:
    async def down() -> str | None:
        return "the schema is not migrated yet: migrations pending"

    async def up() -> str | None:
        return None

    with client_of(world, {"sidecar": up, "database": down}) as client:
        ready = client.get("/ready")
        health = client.get("/health")

    assert ready.status_code == 503
    assert ready.json()["failing"] == {
        "database": "the schema is not migrated yet: migrations pending"
    }
    assert health.json() == {"service": "notification-service", "status": "healthy"}


async def test_the_ledger_is_unavailable_until_the_schema_is_migrated() -> None:
    # A pool with no connection made (min_size 0): nothing here reaches a database.
    pool = await create_pool("postgresql://nobody@127.0.0.1:1/none", PoolSettings())
    schema = SchemaStatus(waiting_for="database unavailable: refused")
    ledger = PostgresLedger(pool, namespace="n", schema=schema)
    try:
        with pytest.raises(LedgerUnavailableError, match="not migrated yet: database unavail"):
            await ledger.history("user-7", since=None, limit=10)
    finally:
        await pool.close()


def test_a_user_id_with_a_control_character_is_a_422_not_a_query(world: World) -> None:
    # Found by fuzzing: Postgres cannot hold a NUL, and the query once answered 500.
    with client_of(world) as client:
        response = client.get("/notifications", params={"user_id": "\x00"})
    assert response.status_code == 422
