"""websocket-service through real daprd sidecars, Kafka and the audit log (Postgres):
authentication, per-user isolation, fan-out over two replicas, resume across a restart,
a client that never reads, the connection count, pings that reap a frozen client. The
tests run their own small cluster (tests.support.live_stream): three websocket-service
replicas, each beside its own daprd with a consumer group of its own, configured
differently (defaults; JWKS and a short queue; the secret store, no audit log and a ping
every second), and an audit-log-service."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import websockets
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.exceptions import ConnectionClosed

from taskevents.events import EventType, TaskEvent
from taskevents.settings import DEVELOPMENT_JWT_SECRET
from tests.support.cluster import Service
from tests.support.live_stream import LiveStack, connect, hs_token, live_stack, until, ws_url
from tests.support.stack import Stack
from tests.support.waiting import eventually
from websocket_service.adapters.audit_log import DaprAuditLog
from websocket_service.ports import AuditUnavailableError

pytestmark = pytest.mark.integration

STORE_SECRET = "a-secret-only-the-dapr-secret-store-knows-0123456789"
KEY_ID = "test-key-1"


async def rejection(url: str, **options: Any) -> tuple[int, str, list[Any]]:
    """Connect and read until closed: (close code, reason, whatever was received)."""
    received: list[Any] = []
    async with websockets.connect(url, open_timeout=30, **options) as client:
        try:
            async for message in client:
                received.append(message)
        except ConnectionClosed:
            pass
        assert client.close_code is not None
        return client.close_code, client.close_reason or "", received


def event_for(user_id: str, task_id: str, title: str = "T", **payload: Any) -> TaskEvent:
    return TaskEvent.create(
        EventType.TASK_UPDATED,
        task_id=task_id,
        user_id=user_id,
        payload={"title": title, **payload},
    )


# --- a JWKS served by a real local HTTP server -----------------------------------------


# A JWKS comes with the audience and issuer every token must name.
JWKS_AUDIENCE = "taskevents"
JWKS_ISSUER = "https://id.taskevents.test"
# Beside it, development's shared key still signs tokens (in development), for that
# audience and issuer.
JWKS_CLAIMS = {"aud": JWKS_AUDIENCE, "iss": JWKS_ISSUER}


@dataclass
class KeySet:
    url: str
    private_key: rsa.RSAPrivateKey

    def token(self, user_id: str, *, kid: str = KEY_ID, **claims: Any) -> str:
        body = {
            "sub": user_id,
            "exp": int(time.time()) + 600,
            "aud": JWKS_AUDIENCE,
            "iss": JWKS_ISSUER,
            **claims,
        }
        return jwt.encode(body, self.private_key, algorithm="RS256", headers={"kid": kid})


def _b64(number: int) -> str:
    raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key_set() -> Iterator[KeySet]:
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private_key.public_key().public_numbers()
    body = json.dumps(
        {
            "keys": [
                {"kty": "RSA", "kid": KEY_ID, "use": "sig", "alg": "RS256",
                 "n": _b64(numbers.n), "e": _b64(numbers.e)}
            ]
        }
    ).encode()  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield KeySet(f"http://127.0.0.1:{server.server_address[1]}/jwks.json", private_key)
    server.shutdown()


# --- the stack: websocket-service replicas 0, 1, 2 ------------------------------------


def jwks_settings(key_set: KeySet) -> dict[str, str]:
    return {
        "TASKEVENTS_JWKS_URL": key_set.url,
        "TASKEVENTS_JWT_AUDIENCE": JWKS_AUDIENCE,
        "TASKEVENTS_JWT_ISSUER": JWKS_ISSUER,
    }


@pytest_asyncio.fixture(scope="module")
async def live(stack: Stack, key_set: KeySet) -> AsyncIterator[LiveStack]:
    replicas = [
        # 0: the defaults.
        ({}, {}),
        # 1: RS256 through the JWKS too, a short queue, a heartbeat every second.
        (
            {
                **jwks_settings(key_set),
                "WEBSOCKET_MAX_QUEUE_FRAMES": "20",
                "WEBSOCKET_SHUTDOWN_GRACE_SECONDS": "2",
                "WEBSOCKET_HEARTBEAT_SECONDS": "1",
            },
            {},
        ),
        # 2: the key from the Dapr secret store; an audit app id nobody serves; coalescing;
        # a ping every second, to be answered within three.
        (
            {
                "TASKEVENTS_JWT_SECRET_STORE": "envstore",
                "WEBSOCKET_AUDIT_APP_ID": "no-such-audit-log",
                "WEBSOCKET_RESUME_TIMEOUT_SECONDS": "3",
                "WEBSOCKET_COALESCE_MILLISECONDS": "5",
                "WEBSOCKET_WS_PING_INTERVAL_SECONDS": "1",
                "WEBSOCKET_WS_PING_TIMEOUT_SECONDS": "3",
            },
            # The envstore reads TASKEVENTS_<name>; the key's name is JWT_SECRET.
            {"TASKEVENTS_JWT_SECRET": STORE_SECRET},
        ),
    ]
    # The audit log checks tokens as replica 1 does: a resume there asks it with the
    # client's own token (replica 0's tokens, without audience and issuer, it refuses).
    async with live_stack(stack, replicas, audit_env=jwks_settings(key_set)) as running:
        yield running


# --- the tests -----------------------------------------------------------------------------


async def test_bad_tokens_are_closed_with_policy_violation_before_anything_is_sent(
    live: LiveStack, key_set: KeySet, unique: str
) -> None:
    service = live[0]
    user = f"user-{unique}"
    cases = {
        "missing": (ws_url(service), "missing token"),
        "expired": (ws_url(service, hs_token(user, exp=int(time.time()) - 60)), "expired"),
        "forged": (
            ws_url(service, hs_token(user, secret="another-secret-of-enough-length-000000")),
            "signature",
        ),
        "garbage": (ws_url(service, "not-a-jwt"), "well-formed"),
        "no exp": (
            ws_url(service, jwt.encode({"sub": user}, DEVELOPMENT_JWT_SECRET, "HS256")),
            "'exp'",
        ),
        "RS256 without JWKS": (ws_url(service, key_set.token(user)), "algorithm"),
        "unknown JWKS key": (ws_url(live[1], key_set.token(user, kid="other")), "key"),
        "JWKS token for another audience": (
            ws_url(live[1], key_set.token(user, aud="another-app")),
            "audience",
        ),
        "watch all without the operator role": (
            ws_url(service, hs_token(user), watch="all"),
            "operator",
        ),
    }
    for name, (url, reason) in cases.items():
        code, why, received = await rejection(url)
        assert (code, received) == (1008, []), name
        assert reason in why, (name, why)
    # A token in Sec-WebSocket-Protocol must come with the taskevents.v1 subprotocol.
    code, why, received = await rejection(
        ws_url(service), subprotocols=[websockets.Subprotocol(f"bearer.{hs_token(user)}")]
    )
    assert (code, received) == (1008, [])
    assert "taskevents.v1" in why


async def test_tokens_in_the_subprotocol_the_secret_store_and_the_jwks_are_accepted(
    live: LiveStack, key_set: KeySet, unique: str
) -> None:
    user = f"user-{unique}"
    protocols = [
        websockets.Subprotocol("taskevents.v1"),
        websockets.Subprotocol(f"bearer.{hs_token(user)}"),
    ]
    client = await connect(ws_url(live[0]), subprotocols=protocols)
    assert client.socket.subprotocol == "taskevents.v1"  # the token is never echoed
    assert client.of_kind("welcome")[0]["user_id"] == user
    await client.close()

    rs256 = await connect(ws_url(live[1], key_set.token(user)))
    assert rs256.of_kind("welcome")[0]["user_id"] == user
    await rs256.close()

    # Replica 2 reads its key from the Dapr secret store: the environment's key is refused.
    from_store = await connect(ws_url(live[2], hs_token(user, secret=STORE_SECRET)))
    assert from_store.of_kind("welcome")[0]["user_id"] == user
    await from_store.close()
    code, why, _ = await rejection(ws_url(live[2], hs_token(user)))
    assert (code, why) == (1008, "token signature does not verify")


async def test_fifty_users_see_only_their_own_events_and_an_admin_sees_all(
    live: LiveStack, unique: str
) -> None:
    service = live[0]
    users = [f"iso-{i}-{unique}" for i in range(50)]
    clients = {u: await connect(ws_url(service, hs_token(u))) for u in users}
    admin = await connect(
        ws_url(service, hs_token(f"operator-{unique}", roles=["operator"]), watch="all")
    )
    assert admin.of_kind("welcome")[0]["watch_all"] is True
    published: dict[str, list[str]] = {u: [] for u in users}
    for round_ in range(3):
        for user in users:
            event = event_for(user, f"task-{user}-{round_}")
            published[user].append(event.event_id)
            await live.publisher.publish(event)
    everything = {i for ids in published.values() for i in ids}

    async def all_delivered() -> bool:
        return (
            all(set(c.event_ids) >= set(published[u]) for u, c in clients.items())
            and set(admin.event_ids) >= everything
        )

    await eventually(all_delivered, timeout=60, what="every user's events", check=live.check_alive)
    for user, client in clients.items():
        assert sorted(client.event_ids) == sorted(published[user])
        assert {e["user_id"] for e in client.events} == {user}
    assert {i for i in admin.event_ids if i in everything} == everything
    for client in [*clients.values(), admin]:
        await client.close()


async def test_a_client_narrows_its_stream_and_malformed_messages_get_errors(
    live: LiveStack, unique: str
) -> None:
    user = f"user-{unique}"
    client = await connect(ws_url(live[0], hs_token(user)))
    for bad in ["not json", "[1]", '{"v":1,"kind":"subscribe","types":["task.nope"]}',
                '{"v":1,"kind":"subscribe"}', '{"v":9,"kind":"ping"}']:  # fmt: skip
        await client.socket.send(bad)
    await client.socket.send(b"\x00binary")
    # Only completions of the task; one task, so its events arrive in publish order.
    narrow = {"task_ids": [f"task-{unique}"], "types": ["task.completed"]}
    await client.socket.send(json.dumps({"v": 1, "kind": "subscribe", **narrow}))
    await until(lambda: client.of_kind("subscribed"), what="subscribed frame")
    assert len(client.of_kind("error")) == 6
    assert client.of_kind("subscribed")[-1] == {"v": 1, "kind": "subscribed", **narrow}
    updated = event_for(user, f"task-{unique}")
    completed = TaskEvent.create(
        EventType.TASK_COMPLETED, task_id=f"task-{unique}", user_id=user, payload={"title": "T"}
    )
    for event in (updated, completed):
        await live.publisher.publish(event)
    await until(lambda: completed.event_id in client.event_ids, what="the completion")
    await client.socket.send(json.dumps({"v": 1, "kind": "unsubscribe", **narrow}))
    await until(lambda: len(client.of_kind("subscribed")) == 2, what="unsubscribed")
    after = event_for(user, f"task-{unique}")
    await live.publisher.publish(after)
    await until(lambda: after.event_id in client.event_ids, what="every event again")
    assert client.event_ids == [completed.event_id, after.event_id]
    assert client.closed_code is None  # errors never closed the socket
    await client.close()


async def test_every_client_on_either_replica_gets_all_of_its_users_events(
    live: LiveStack, unique: str
) -> None:
    users = [f"fan-{i}-{unique}" for i in range(10)]
    on_one = {u: await connect(ws_url(live[1], hs_token(u, **JWKS_CLAIMS))) for u in users}
    on_two = {u: await connect(ws_url(live[2], hs_token(u, secret=STORE_SECRET))) for u in users}
    published: dict[str, set[str]] = {u: set() for u in users}
    for n in range(5):
        for user in users:
            event = event_for(user, f"task-{user}-{n % 2}")
            published[user].add(event.event_id)
            await live.publisher.publish(event)

    async def everyone_has_all() -> bool:
        return all(
            set(c.event_ids) == published[u] for side in (on_one, on_two) for u, c in side.items()
        )

    await eventually(
        everyone_has_all, timeout=60, what="fan-out to both replicas", check=live.check_alive
    )
    for side in (on_one, on_two):
        for user, client in side.items():
            assert len(client.event_ids) == len(published[user])  # no duplicate
            await client.close()


async def connection_count(service: Service) -> int:
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{service.url}/health")).json()
    assert body["service"] == "websocket-service"
    return int(body["connections"])


async def test_health_counts_the_open_connections(live: LiveStack, unique: str) -> None:
    async def count() -> int:
        return await connection_count(live[2])

    before = await count()
    clients = [
        await connect(ws_url(live[2], hs_token(f"h{i}-{unique}", secret=STORE_SECRET)))
        for i in range(7)
    ]
    assert await count() == before + 7
    for client in clients[:3]:
        await client.close()
    await eventually(lambda: _is(count, before + 4), what="count after 3 closed")
    for client in clients[3:]:
        await client.close()
    await eventually(lambda: _is(count, before), what="count after all closed")


# A client in a process of its own that prints each frame's kind, and at the end how the
# connection closed. It sends no pings of its own, so the server's are the only ones.
FROZEN_CLIENT = """
import asyncio, json, sys
import websockets

async def main():
    async with websockets.connect(sys.argv[1], ping_interval=None) as client:
        try:
            async for message in client:
                print(json.loads(message)["kind"], flush=True)
        except websockets.ConnectionClosed:
            pass
        print("closed", client.close_code, client.close_reason, flush=True)

asyncio.run(main())
"""


async def test_pings_reap_a_frozen_client_and_keep_a_live_one(live: LiveStack, unique: str) -> None:
    # Replica 2 pings every second and waits 3 s for the pong. A client process that
    # is stopped (SIGSTOP: a frozen laptop, a dead NAT path) keeps its TCP connection open
    # but answers no ping: the server must let it go, and keep the client that answers.
    service = live[2]
    before = await connection_count(service)
    alive_user = f"alive-{unique}"
    alive = await connect(ws_url(service, hs_token(alive_user, secret=STORE_SECRET)))
    frozen = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FROZEN_CLIENT,
        ws_url(service, hs_token(f"frozen-{unique}", secret=STORE_SECRET)),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert frozen.stdout is not None
    try:
        welcome = await asyncio.wait_for(frozen.stdout.readline(), 30)
        assert welcome.decode().strip() == "welcome"
        assert await connection_count(service) == before + 2
        frozen.send_signal(signal.SIGSTOP)
        await eventually(
            lambda: _is(lambda: connection_count(service), before + 1),
            timeout=20,
            what="the frozen client reaped",
            check=service.check_alive,
        )
        # The live client answered every ping meanwhile and still gets its events.
        event = event_for(alive_user, f"task-{alive_user}")
        await live.publisher.publish(event)
        await until(lambda: alive.event_ids == [event.event_id], what="the live client's event")
        assert alive.closed_code is None
        frozen.send_signal(signal.SIGCONT)
        output, _ = await asyncio.wait_for(frozen.communicate(), 30)
        assert output.decode().splitlines()[-1] == "closed 1011 keepalive ping timeout"
    finally:
        if frozen.returncode is None:
            frozen.send_signal(signal.SIGCONT)
            frozen.kill()
            await frozen.wait()
    await alive.close()


async def _is(probe: Any, expected: int) -> bool:
    return bool(await probe() == expected)


async def test_resume_after_a_restart_replays_the_gap_once_then_goes_live(
    live: LiveStack, http: httpx.AsyncClient,
    unique: str,
) -> None:  # fmt: skip
    user, task = f"user-{unique}", f"task-{unique}"  # one task: one partition, one order
    # 0-2 live, 3-5 missed while down, 6-7 live after the resume, 8 a last marker. The last
    # one seen is back-dated (a recurring catch-up): by timestamp, 0 and 1 come after it.
    events = [event_for(user, task, f"e{n}") for n in range(9)]
    events[2] = TaskEvent.create(
        EventType.TASK_RECURRING_TRIGGERED,
        task_id=task,
        user_id=user,
        timestamp=events[2].timestamp - timedelta(days=30),
    )
    client = await connect(ws_url(live[1], hs_token(user, **JWKS_CLAIMS)))
    for event in events[:3]:
        await live.publisher.publish(event)
    await until(lambda: len(client.event_ids) == 3, what="first three live")
    last_seen = client.event_ids[-1]

    live.stop(1)
    assert client.task is not None
    await asyncio.wait_for(client.task, 30)  # the client's reader ends with the close
    assert client.closed_code == 1001  # going away: reconnect
    for event in events[3:6]:
        await live.publisher.publish(event)

    # The audit log has the gap (the restarted replica knows nothing of it).
    async def gap_stored() -> bool:
        response = await http.get(
            f"{live.audit.service.url}/audit/events",
            params={"user_id": user},
            headers={"Authorization": f"Bearer {hs_token(user, **JWKS_CLAIMS)}"},
        )
        return {e.event_id for e in events[3:6]} <= {
            r["event_id"] for r in response.json()["items"]
        }

    await eventually(gap_stored, timeout=60, what="the gap in the audit log")
    live.start_again(1)
    resumed = await connect(ws_url(live[1], hs_token(user, **JWKS_CLAIMS), last_event_id=last_seen))
    for event in events[6:8]:
        await live.publisher.publish(event)

    await until(
        lambda: len(resumed.event_ids) >= 5 and resumed.of_kind("resume"),
        timeout=60,
        what="gap and live events",
        check=live[1].check_alive,
    )
    # One task, one partition: once the marker published last has arrived, any duplicate of
    # an earlier event would have arrived before it.
    await live.publisher.publish(events[8])
    await until(
        lambda: events[8].event_id in resumed.event_ids,
        timeout=60,
        what="the last marker",
        check=live[1].check_alive,
    )
    assert resumed.event_ids == [e.event_id for e in events[3:]]  # in order, once each
    # The replay (what the audit log had when asked: at least the gap, perhaps the later
    # events too), then the resume status, then live events — the ids above show no event
    # twice and none missing.
    flow = [
        "replayed" if f["kind"] == "event" and f.get("replayed") else f["kind"]
        for f in resumed.frames
        if f["kind"] in ("event", "resume")
    ]
    replayed = flow.index("resume")
    assert replayed >= 3
    assert flow == ["replayed"] * replayed + ["resume"] + ["event"] * (6 - replayed)
    status = resumed.of_kind("resume")[0]
    assert (status["status"], status["replayed"], status["after_event_id"]) == (
        "complete",
        replayed,
        last_seen,
    )
    # Control frames keep a browser informed that the stream is alive (every 1 s here).
    await until(lambda: resumed.of_kind("heartbeat"), timeout=10, what="a heartbeat")
    await resumed.close()


async def test_a_resume_asks_the_audit_log_with_the_clients_own_token(
    live: LiveStack, http: httpx.AsyncClient, unique: str
) -> None:
    user, task = f"user-{unique}", f"task-{unique}"
    operator = hs_token(f"operator-{unique}", roles=["operator"], **JWKS_CLAIMS)
    events = [event_for(user, task, f"r{n}") for n in range(3)]
    for event in events:
        await live.publisher.publish(event)
    user_token = hs_token(user, **JWKS_CLAIMS)

    async def stored() -> bool:
        response = await http.get(
            f"{live.audit.service.url}/audit/events",
            params={"user_id": user},
            headers={"Authorization": f"Bearer {user_token}"},
        )
        return {e.event_id for e in events} <= {r["event_id"] for r in response.json()["items"]}

    await eventually(stored, timeout=60, what="the events in the audit log")
    # The request a resume makes, through the replica's own sidecar (Dapr service
    # invocation): with the user's token it reads the user's events; with another user's,
    # the audit log refuses.
    audit = DaprAuditLog(
        dapr_http_port=live[1].dapr_http_port,
        app_id=live.audit.spec.app_id,
        dapr_api_token=live.stack.dapr_api_token,
    )
    try:
        history = await audit.history_after(
            user, events[0].event_id, max_events=10, bearer_token=user_token
        )
        unknown = await audit.history_after(
            user, f"never-published-{unique}", max_events=10, bearer_token=user_token
        )
        with pytest.raises(AuditUnavailableError, match="answered 403"):
            await audit.history_after(
                user,
                events[0].event_id,
                max_events=10,
                bearer_token=hs_token(f"other-{unique}", **JWKS_CLAIMS),
            )
    finally:
        await audit.close()
    assert history.found_anchor
    assert [e.event_id for e in history.events] == [e.event_id for e in events[1:]]
    assert not unknown.found_anchor

    # The socket: a user's resume and an operator's watch-all resume both complete.
    resumed = await connect(ws_url(live[1], user_token, last_event_id=events[0].event_id))
    watching = await connect(
        ws_url(live[1], operator, watch="all", last_event_id=events[0].event_id)
    )
    await until(lambda: resumed.of_kind("resume") and watching.of_kind("resume"), timeout=30)
    for client in (resumed, watching):
        status = client.of_kind("resume")[0]
        assert (status["status"], status.get("reason")) == ("complete", None), status
    assert resumed.event_ids == [e.event_id for e in events[1:]]
    assert [e for e in watching.event_ids if e in {x.event_id for x in events}] == [
        e.event_id for e in events[1:]
    ]
    await resumed.close()
    await watching.close()


async def test_a_client_dropping_out_mid_stream_gets_every_event_of_many_tasks_once(
    live: LiveStack, unique: str
) -> None:
    """Twelve tasks (spread over the topic's partitions) and a back-dated event (as a
    recurring catch-up publishes) in one stream; the client drops out twice and resumes:
    once in the middle of the stream, once right after the back-dated event (by timestamp,
    everything else sorts after it). In the end it has every event once, each task's in
    order."""
    user = f"user-{unique}"
    token = hs_token(user, **JWKS_CLAIMS)
    tasks = [f"task-{unique}-{n}" for n in range(12)]
    events = [event_for(user, tasks[n % 12], f"m{n}") for n in range(150)]
    back_dated = events[70] = TaskEvent.create(
        EventType.TASK_RECURRING_TRIGGERED,
        task_id=tasks[70 % 12],
        user_id=user,
        timestamp=events[70].timestamp - timedelta(days=30),
        payload={"title": "caught up"},
    )
    clients = [await connect(ws_url(live[1], token))]
    go_on = asyncio.Event()

    async def publish(chunk: list[TaskEvent]) -> None:
        for event in chunk:
            await live.publisher.publish(event)
            await asyncio.sleep(0.01)  # a stream, not a burst: the drop-out lands inside it

    async def publish_all() -> None:
        await publish(events[:70])
        await go_on.wait()
        await publish(events[71:])

    def received() -> list[str]:
        return [i for c in clients for i in c.event_ids]

    def has(wanted: list[TaskEvent]) -> Callable[[], bool]:
        return lambda: set(received()) >= {e.event_id for e in wanted}

    async def drop_out_and_resume() -> None:
        await clients[-1].close()
        last_seen = clients[-1].event_ids[-1]
        clients.append(await connect(ws_url(live[1], token, last_event_id=last_seen)))

    publishing = asyncio.create_task(publish_all())
    await until(lambda: len(received()) >= 20, timeout=60, check=live[1].check_alive)
    await drop_out_and_resume()  # mid-stream
    await until(has(events[:70]), timeout=60, check=live[1].check_alive)
    await live.publisher.publish(back_dated)
    await until(has([back_dated]), timeout=60, check=live[1].check_alive)
    assert clients[-1].event_ids[-1] == back_dated.event_id
    go_on.set()
    await drop_out_and_resume()  # after the back-dated event, while the stream goes on
    await asyncio.wait_for(publishing, 60)

    await until(
        lambda: set(received()) >= {e.event_id for e in events},
        timeout=60, what="every event", check=live[1].check_alive,
    )  # fmt: skip
    # One marker per task, published last: a late duplicate of a task's event would come
    # before its marker (one task, one partition, one order).
    markers = [event_for(user, task, "marker") for task in tasks]
    for marker in markers:
        await live.publisher.publish(marker)
    await until(
        lambda: set(received()) >= {m.event_id for m in markers},
        timeout=60, what="the markers", check=live[1].check_alive,
    )  # fmt: skip
    ids = received()
    assert sorted(ids) == sorted(e.event_id for e in [*events, *markers])  # each once
    for task in tasks:
        of_task = [e.event_id for e in [*events, *markers] if e.task_id == task]
        assert [i for i in ids if i in set(of_task)] == of_task
    statuses = [c.of_kind("resume")[0] for c in clients[1:]]
    assert [s["status"] for s in statuses] == ["complete", "complete"], statuses
    assert events[70].event_id in ids
    await clients[-1].close()


async def test_when_the_audit_log_cannot_answer_the_client_is_told_and_live_flows(
    live: LiveStack, unique: str
) -> None:
    user = f"user-{unique}"
    client = await connect(
        ws_url(live[2], hs_token(user, secret=STORE_SECRET), last_event_id="gone-event")
    )
    await until(lambda: client.of_kind("resume"), timeout=20, what="resume frame")
    status = client.of_kind("resume")[0]
    assert status["status"] == "unavailable"
    assert "audit log" in status["reason"]
    event = event_for(user, f"task-{unique}")
    await live.publisher.publish(event)
    await until(lambda: client.event_ids == [event.event_id], what="live event")
    await client.close()


async def test_a_client_that_never_reads_is_closed_and_a_hundred_others_keep_up(
    live: LiveStack, unique: str
) -> None:
    slow_user = f"slow-{unique}"
    # The stuck client reads nothing: a tiny receive buffer (set before connecting, so the
    # window stays small) and no message queue. The kernel still buffers a lot (the server's
    # send buffer grows to 4 MiB, tcp_wmem) before the server's queue (20 frames on replica
    # 1) fills: about 12 MB here, so 20 MB of events.
    health = f"{live[1].url}/health"
    async with httpx.AsyncClient() as http:
        before = (await http.get(health)).json()["connections"]
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", live[1].app.spec.app_port))
    stuck = await websockets.connect(
        ws_url(live[1], hs_token(slow_user, **JWKS_CLAIMS)), sock=sock, max_queue=1, open_timeout=30
    )
    peers = [await connect(ws_url(live[1], hs_token(slow_user, **JWKS_CLAIMS)))]
    others = [f"quick-{i}-{unique}" for i in range(99)]
    fast = {u: await connect(ws_url(live[1], hs_token(u, **JWKS_CLAIMS))) for u in others}
    padding = "x" * 64_000
    slow_events = [
        event_for(slow_user, f"task-{slow_user}", f"s{n}", pad=padding) for n in range(320)
    ]
    published: dict[str, str] = {}
    for n, event in enumerate(slow_events):
        await live.publisher.publish(event)
        if n < len(others):
            other = event_for(others[n], f"task-{others[n]}")
            published[others[n]] = other.event_id
            await live.publisher.publish(other)

    async def all_in() -> bool:
        return all(c.event_ids == [published[u]] for u, c in fast.items()) and all(
            len(p.event_ids) == len(slow_events) for p in peers
        )

    # In time: within 60 s of the last publish (20 MB through one shared CPU), however
    # stuck the one client is.
    await eventually(all_in, timeout=60, what="the 100 readers", check=live[1].check_alive)
    for peer in peers:
        assert peer.event_ids == [e.event_id for e in slow_events]
    # The stuck client was cut off: its connection is gone from the server.
    async with httpx.AsyncClient() as http:

        async def stuck_gone() -> bool:
            body = (await http.get(health)).json()
            return bool(body["connections"] == before + len(peers) + len(fast))

        await eventually(stuck_gone, timeout=30, what="the stuck client dropped")
        metrics = (await http.get(f"{live[1].url}/metrics")).text
    closed = re.search(r"^taskevents_websocket_slow_clients_closed_total (\S+)", metrics, re.M)
    assert closed is not None
    assert float(closed.group(1)) >= 1
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(_read_until_closed(stuck), 30)
    for client in [*peers, *fast.values()]:
        await client.close()


async def _read_until_closed(client: websockets.ClientConnection) -> None:
    while True:
        await client.recv()


async def test_a_client_message_over_the_size_limit_closes_with_1009(
    live: LiveStack, unique: str
) -> None:
    client = await connect(ws_url(live[0], hs_token(f"big-{unique}")))
    await client.socket.send("x" * (64 * 1024 + 1))  # the default WEBSOCKET_MAX_MESSAGE_BYTES
    await until(lambda: client.closed_code is not None, what="the close after a big message")
    assert client.closed_code == 1009  # message too big
    # The server goes on: a new client of the same user is welcome.
    again = await connect(ws_url(live[0], hs_token(f"big-{unique}")))
    assert again.of_kind("welcome")
    await again.close()
