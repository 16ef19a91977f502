"""The socket endpoint in-process (Starlette's TestClient, no network): authentication,
frames, delivery from the subscription route, dev tokens. (The going-away close at
shutdown needs a real server: TestClient cannot stop while a socket is open.)"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from taskevents.auth import TokenRejectedError, TokenVerifier, load_shared_key
from taskevents.events import TaskEvent
from taskevents.retry import RetryPolicy
from taskevents.secrets import DaprSecrets, SecretUnavailableError
from websocket_service.app import create_app
from websocket_service.bootstrap import Bootstrap, Services, bootstrap
from websocket_service.frames import reply_to_client_message
from websocket_service.ports import AuditLog
from websocket_service.settings import Settings

SECRET = "unit-test-secret-of-enough-length-for-hs256"


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "development",
        "jwt_secret": SECRET,
        "shutdown_grace_seconds": 2.0,
        **overrides,
    }
    return Settings(**values)


def with_audit_log(audit_log: AuditLog) -> Bootstrap:
    """The service's own wiring, with the audit log replaced."""

    @asynccontextmanager
    async def bootstrap_with_audit_log(settings: Settings) -> AsyncIterator[Services]:
        async with bootstrap(settings) as services:
            yield dataclasses.replace(services, audit_log=audit_log)

    return bootstrap_with_audit_log


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(settings())) as client:
        yield client


def token_for(user_id: str, *, secret: str = SECRET, **claims: Any) -> str:
    body = {"sub": user_id, "exp": datetime.now(UTC) + timedelta(minutes=5), **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, secret, "HS256")


def cloud_event(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "specversion": "1.0",
        "source": "unit-test",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "data": json.loads(event.to_json()),
        "topic": "task-events",
        "pubsubname": "websocket-pubsub",
    }


def deliver(client: TestClient, event: TaskEvent) -> str:
    response = client.post(
        "/events/task-events",
        content=json.dumps(cloud_event(event)),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert response.status_code == 200
    status: str = response.json()["status"]
    return status


def expect_close(client: TestClient, url: str) -> WebSocketDisconnect:
    with client.websocket_connect(url) as ws, pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    return closed.value


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("not-a-jwt", "token is not a well-formed JWT"),
        (token_for("ada", secret="someone-elses-secret-of-enough-length"), "signature"),
        (token_for("ada", exp=datetime.now(UTC) - timedelta(minutes=1)), "token expired"),
        (token_for("ada", exp=None), "lacks the 'exp' claim"),
        (token_for("", exp=None, sub=None), "lacks the"),
    ],
    ids=["missing", "malformed", "forged", "expired", "no-exp", "no-sub"],
)
def test_a_bad_token_is_closed_with_policy_violation(
    client: TestClient, token: str | None, reason: str
) -> None:
    url = "/ws" if token is None else f"/ws?token={token}"

    closed = expect_close(client, url)

    assert closed.code == 1008
    assert reason in closed.reason


def test_a_client_gets_a_welcome_then_its_events(client: TestClient) -> None:
    event = TaskEvent.create("task.created", task_id="t1", user_id="ada", payload={"title": "A"})

    with client.websocket_connect(f"/ws?token={token_for('ada')}") as ws:
        welcome = ws.receive_json()
        assert deliver(client, event) == "SUCCESS"
        frame = ws.receive_json()

    assert welcome["v"] == 1
    assert welcome["kind"] == "welcome"
    assert welcome["user_id"] == "ada"
    assert frame == {"v": 1, "kind": "event", "event": json.loads(event.to_json())}


def test_a_redelivered_event_and_other_users_events_are_not_sent(client: TestClient) -> None:
    mine = TaskEvent.create("task.created", task_id="t1", user_id="ada")
    theirs = TaskEvent.create("task.created", task_id="t2", user_id="bob")

    with client.websocket_connect(f"/ws?token={token_for('ada')}") as ws:
        ws.receive_json()  # welcome
        deliver(client, mine)
        deliver(client, mine)
        deliver(client, theirs)
        ws.send_json({"v": 1, "kind": "ping"})

        frames = [ws.receive_json(), ws.receive_json()]

    assert [f["kind"] for f in frames] == ["event", "pong"]
    assert frames[0]["event"]["event_id"] == mine.event_id


def test_a_malformed_client_message_gets_an_error_and_the_socket_stays(
    client: TestClient,
) -> None:
    with client.websocket_connect(f"/ws?token={token_for('ada')}") as ws:
        ws.receive_json()  # welcome
        ws.send_text("{not json")
        error = ws.receive_json()
        ws.send_bytes(b"\x00\x01")
        binary_error = ws.receive_json()
        ws.send_json({"v": 1, "kind": "ping"})
        pong = ws.receive_json()

    assert error == {"v": 1, "kind": "error", "message": "message is not JSON"}
    assert binary_error["kind"] == "error"
    assert pong == {"v": 1, "kind": "pong"}


def test_health_counts_connections(client: TestClient) -> None:
    assert client.get("/health").json() == {
        "service": "websocket-service",
        "status": "healthy",
        "connections": 0,
    }
    with client.websocket_connect(f"/ws?token={token_for('ada')}") as ws:
        ws.receive_json()
        assert client.get("/health").json()["connections"] == 1


def test_dev_tokens_open_a_socket_in_development(client: TestClient) -> None:
    response = client.post("/dev/token", json={"user_id": "user-7"})
    assert response.status_code == 200
    token = response.json()["token"]

    with client.websocket_connect(f"/ws?token={token}") as ws:
        welcome = ws.receive_json()

    assert welcome["user_id"] == "user-7"


def test_dev_tokens_do_not_exist_outside_development() -> None:
    with TestClient(create_app(settings(environment="production"))) as client:
        assert client.post("/dev/token", json={"user_id": "user-7"}).status_code == 404


def test_the_live_page_is_served(client: TestClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/dev/token" in response.text


class StoreThatAnswersOnTheThirdRead(DaprSecrets):
    def __init__(self) -> None:
        super().__init__(store="envstore", http_port=0)
        self.reads = 0

    async def read(self, name: str) -> str:
        self.reads += 1
        if self.reads < 3:
            raise SecretUnavailableError("sidecar at 127.0.0.1 does not answer")
        return SECRET


async def test_tokens_are_refused_until_the_key_comes_from_the_secret_store() -> None:
    store = StoreThatAnswersOnTheThirdRead()
    tokens = TokenVerifier(None, operator_role="operator")
    with pytest.raises(TokenRejectedError) as refused:
        await tokens.verify(token_for("ada"))
    assert refused.value.retry_later

    quickly = RetryPolicy("test", first_wait_seconds=0.001, max_wait_seconds=0.001)
    await load_shared_key(tokens, store, "JWT_SECRET", policy=quickly)

    assert store.reads == 3
    assert (await tokens.verify(token_for("ada"))).user_id == "ada"


def test_the_dev_secret_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="TASKEVENTS_JWT_SECRET"):
        Settings(environment="production")
    assert Settings(environment="development").placeholder_secrets() == [
        "TASKEVENTS_JWT_SECRET (or a JWKS: TASKEVENTS_JWKS_URL)"
    ]


@pytest.mark.parametrize(
    ("message", "reply_kind"),
    [
        ('{"v":1,"kind":"ping"}', "pong"),
        ('{"kind":"ping"}', "pong"),
        ('{"v":2,"kind":"ping"}', "error"),
        ('{"v":1,"kind":"subscribe"}', "error"),
        ("[1,2]", "error"),
        (None, "error"),
    ],
)
def test_client_message_replies(message: str | None, reply_kind: str) -> None:
    assert json.loads(reply_to_client_message(message))["kind"] == reply_kind


def test_a_token_in_the_subprotocol_is_accepted_and_not_echoed(client: TestClient) -> None:
    protocols = ["taskevents.v1", f"bearer.{token_for('ada')}"]
    with client.websocket_connect("/ws", subprotocols=protocols) as ws:
        welcome = ws.receive_json()
        assert ws.accepted_subprotocol == "taskevents.v1"
    assert welcome["user_id"] == "ada"


def test_only_operators_watch_every_user(client: TestClient) -> None:
    closed = expect_close(client, f"/ws?token={token_for('ada')}&watch=all")
    assert (closed.code, closed.reason) == (1008, "watching every user needs the operator role")

    theirs = TaskEvent.create("task.created", task_id="t2", user_id="bob")
    operator = token_for("root", roles=["operator"])
    with client.websocket_connect(f"/ws?token={operator}&watch=all") as ws:
        assert ws.receive_json()["watch_all"] is True
        deliver(client, theirs)
        assert ws.receive_json()["event"]["event_id"] == theirs.event_id


def test_a_resume_replays_from_the_audit_log_then_goes_live() -> None:
    from tests.unit.test_websocket_resume import FakeAuditLog

    history = [TaskEvent.create("task.updated", task_id="t", user_id="ada") for _ in range(4)]
    audit = FakeAuditLog(history)
    app = create_app(settings(heartbeat_seconds=0), bootstrap=with_audit_log(audit))
    token = token_for("ada")
    with TestClient(app) as client:
        url = f"/ws?token={token}&last_event_id={history[1].event_id}"
        with client.websocket_connect(url) as ws:
            frames = [ws.receive_json() for _ in range(4)]
            deliver(client, history[3])  # a redelivery of a replayed event: not sent again
            live = TaskEvent.create("task.updated", task_id="t", user_id="ada")
            deliver(client, live)
            frames.append(ws.receive_json())

    assert [f["kind"] for f in frames] == ["welcome", "event", "event", "resume", "event"]
    assert [f["event"]["event_id"] for f in frames if f["kind"] == "event"] == [
        history[2].event_id, history[3].event_id, live.event_id
    ]  # fmt: skip
    assert frames[3] == {
        "v": 1, "kind": "resume", "status": "complete",
        "after_event_id": history[1].event_id, "replayed": 2,
    }  # fmt: skip
    assert audit.tokens == [token]  # the audit log is asked as the client, with its token


def test_one_connection_too_many_for_a_user_or_the_process_is_closed_with_a_reason() -> None:
    limited = settings(max_connections_per_user=2, max_connections=3)
    with TestClient(create_app(limited)) as client:
        ada = token_for("ada")
        with client.websocket_connect(f"/ws?token={ada}") as first:
            first.receive_json()
            with client.websocket_connect(f"/ws?token={ada}") as second:
                second.receive_json()
                closed = expect_close(client, f"/ws?token={ada}")
                assert closed.code == 1008
                assert "at most 2 connections per user" in closed.reason
                with client.websocket_connect(f"/ws?token={token_for('bob')}") as third:
                    third.receive_json()
                    full = expect_close(client, f"/ws?token={token_for('cy')}")
                    assert full.code == 1013
                    assert "connection limit" in full.reason
        # Closed connections free their places.
        with client.websocket_connect(f"/ws?token={ada}") as again:
            assert again.receive_json()["kind"] == "welcome"


def test_a_filter_over_its_limit_closes_the_connection_with_a_reason() -> None:
    with TestClient(create_app(settings(max_filter_items=3))) as client:
        url = f"/ws?token={token_for('ada')}"
        with client.websocket_connect(url) as ws:
            ws.receive_json()  # welcome
            ws.send_text(json.dumps({"v": 1, "kind": "subscribe", "task_ids": ["t1", "t2"]}))
            assert ws.receive_json()["kind"] == "subscribed"
            ws.send_text(json.dumps({"v": 1, "kind": "subscribe", "task_ids": ["t3", "t4"]}))
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == 1008
        assert "at most 3 task ids and types" in closed.value.reason
