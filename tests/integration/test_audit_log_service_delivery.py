"""audit-log-service as the system of record, through a real daprd (bulk subscription), a
real Kafka broker and a Postgres cluster of its own — so that it can be killed, stopped and
counted without touching the shared database: batches mixing good and bad entries, a
SIGKILL in the middle of 10,000 events, Postgres stopped for 20 seconds, dead letters
listed, replayed and discarded through the API and the CLI, and keyset pagination while
rows keep arriving."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from audit_log_service.adapters.postgres import PostgresAuditLog
from audit_log_service.ports import Delivery
from taskevents.events import TaskEvent
from taskevents.kafka import kafka_client_options
from taskevents.postgres import PoolSettings, SchemaStatus, close_pool, create_pool
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.support.authorization import bearer, token
from tests.support.cluster import Service, service_spec, start_service
from tests.support.kafka import (
    DLQ_TOPIC,
    TOPIC,
    cloud_event,
    end_offsets,
    read_from,
    wait_until_consuming,
)
from tests.support.stack import ROOT, OwnPostgres, Stack, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

LOAD_TYPE = "audit.test.load"  # a type only the audit log keeps; the other services ignore it


@dataclass
class AuditPair:
    service: Service
    db: OwnPostgres

    @property
    def url(self) -> str:
        return self.service.url


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    state = Path(tempfile.mkdtemp(prefix="taskevents-audit-pg-"))
    db = OwnPostgres(port=free_port(), state=state)
    try:
        db.run("ensure")
        db.run("start")
        yield db
    finally:
        try:
            db.run("stop")
        finally:
            shutil.rmtree(state, ignore_errors=True)


@pytest_asyncio.fixture(scope="module")
async def audit(
    stack: Stack, cluster: Cluster, own_postgres: OwnPostgres
) -> AsyncIterator[AuditPair]:
    """audit-log-service beside its own daprd, with the production subscriptions and
    resiliency, a consumer group of its own and the database above."""
    spec, consumer = service_spec(
        stack, "audit-log-service", replica=7, env={"DATABASE_URL": own_postgres.url}
    )
    service = start_service(stack, spec, consumer, replica=7)
    try:
        await wait_until_consuming(stack.kafka_brokers, service.consumer_groups)
        yield AuditPair(service=service, db=own_postgres)
    finally:
        service.app.stop()


def load_event(user_id: str, task_id: str, n: int = 0) -> dict[str, Any]:
    return {
        "event_id": f"{user_id}-{n}",
        "type": LOAD_TYPE,
        "task_id": task_id,
        "user_id": user_id,
        "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"n": n},
    }


async def produce(brokers: str, values: list[tuple[bytes, str]], *, topic: str = TOPIC) -> None:
    """Many messages fast, straight to Kafka (the subject is the consumer side)."""
    producer = AIOKafkaProducer(**kafka_client_options(brokers), linger_ms=20, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topic, value, key=key.encode()) for value, key in values]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def stored_ids(db: OwnPostgres, user_id: str) -> list[str]:
    connection = await asyncpg.connect(db.url)
    try:
        rows = await connection.fetch(
            "SELECT event_id FROM audit_events WHERE user_id = $1", user_id
        )
    finally:
        await connection.close()
    return [row["event_id"] for row in rows]


async def dead_letters_of(db: OwnPostgres, user_id: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(db.url)
    try:
        rows = await connection.fetch(
            "SELECT id, event_id, reason, raw FROM dead_letters WHERE raw LIKE $1",
            f"%{user_id}%",
        )
    finally:
        await connection.close()
    return [dict(row) for row in rows]


async def test_a_batch_mixing_valid_and_invalid_entries_stores_the_valid_ones(
    audit: AuditPair, stack: Stack, unique: str
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    valid = [load_event(user_id, task_id, n) for n in range(20)]
    invalid = [
        {**load_event(user_id, task_id, 100), "task_id": ""},  # schema violation
        {**load_event(user_id, task_id, 101), "timestamp": "yesterday"},
    ]
    # One key, so all of them land on one partition and come in one or few batches; the
    # first valid event also comes three more times (a producer retry, a redelivery).
    messages = [cloud_event(e) for e in valid[:10]]
    messages += [cloud_event(valid[0]) for _ in range(3)]
    messages += [cloud_event(e) for e in invalid]
    messages += [f"not json {user_id}".encode()]
    messages += [cloud_event(e) for e in valid[10:]]
    await produce(stack.kafka_brokers, [(m, task_id) for m in messages])

    expected = sorted(e["event_id"] for e in valid)

    async def all_valid_stored() -> list[str] | None:
        ids = await stored_ids(audit.db, user_id)
        return ids if len(ids) >= len(valid) else None

    ids = await eventually(
        all_valid_stored, what="the valid events", check=audit.service.check_alive
    )
    assert sorted(ids) == expected  # each once, and none of the invalid ones

    # The three invalid entries come back through the dead-letter topic, each with the
    # reason it could not be read. (Other subscribers of the shared topic — other test
    # sessions — may dead-letter copies of their own; only ours are counted.)
    wanted = {"", f"{user_id}-100", f"{user_id}-101"}

    async def all_dead_lettered() -> dict[str, dict[str, Any]] | None:
        letters = {d["event_id"] or "": d for d in await dead_letters_of(audit.db, user_id)}
        return letters if wanted <= set(letters) else None

    letters = await eventually(
        all_dead_lettered, timeout=60, what="the invalid entries as dead letters",
        check=audit.service.check_alive,
    )  # fmt: skip
    assert letters[f"{user_id}-100"]["reason"] == (
        "invalid event: task_id: String should have at least 1 character"
    )
    assert "timestamp" in letters[f"{user_id}-101"]["reason"]
    assert letters[""]["raw"] == f"not json {user_id}"  # kept whole, as it was on the topic
    assert letters[""]["reason"].startswith("body is not JSON")


async def test_ten_thousand_events_survive_a_sigkill_exactly_once(
    audit: AuditPair, stack: Stack, unique: str
) -> None:
    user_id = f"user-{unique}"
    events = [load_event(user_id, f"task-{unique}-{n % 60}", n) for n in range(10_000)]
    messages = [(cloud_event(e), e["task_id"]) for e in events]
    await produce(stack.kafka_brokers, messages[:5_000])

    async def some_stored() -> int | None:
        count = len(await stored_ids(audit.db, user_id))
        return count if count >= 500 else None

    await eventually(some_stored, what="the first rows", check=audit.service.check_alive)
    app = audit.service.app.app
    assert app is not None
    app.kill()  # SIGKILL, mid-batch most likely
    await produce(stack.kafka_brokers, messages[5_000:])
    app.start()

    async def all_stored() -> list[str] | None:
        ids = await stored_ids(audit.db, user_id)
        return ids if len(ids) >= len(events) else None

    ids = await eventually(
        all_stored, timeout=180, interval=1.0, what="10,000 rows", check=audit.service.check_alive
    )
    assert len(ids) == 10_000  # no duplicates
    assert set(ids) == {e["event_id"] for e in events}  # no gaps


async def test_postgres_stopped_for_20_seconds_loses_and_dead_letters_nothing(
    audit: AuditPair, stack: Stack, unique: str
) -> None:
    user_id = f"user-{unique}"
    dlq_before = await end_offsets(stack.kafka_brokers, DLQ_TOPIC)
    events = [load_event(user_id, f"task-{unique}-{n % 12}", n) for n in range(3_000)]

    pace_seconds = 0.25  # pacing of the producer, not a wait: 100 events per step

    async def stream() -> None:
        # A steady stream of 400 events/s for 7.5 s.
        for start in range(0, len(events), 100):
            chunk = events[start : start + 100]
            await produce(stack.kafka_brokers, [(cloud_event(e), e["task_id"]) for e in chunk])
            await asyncio.sleep(pace_seconds)

    streaming = asyncio.create_task(stream())

    async def some_stored() -> int | None:
        count = len(await stored_ids(audit.db, user_id))
        return count if count >= 200 else None

    await eventually(some_stored, what="the first rows", check=audit.service.check_alive)
    await asyncio.to_thread(audit.db.run, "stop")
    try:
        outage_ends = time.monotonic() + 20
        await streaming  # the rest of the stream arrives while the database is away
        await asyncio.sleep(max(0.0, outage_ends - time.monotonic()))  # the outage itself
        audit.service.check_alive()
    finally:
        await asyncio.to_thread(audit.db.run, "start")

    async def all_stored() -> list[str] | None:
        ids = await stored_ids(audit.db, user_id)
        return ids if len(ids) >= len(events) else None

    ids = await eventually(
        all_stored, timeout=150, interval=1.0, what="every event after the outage",
        check=audit.service.check_alive,
    )  # fmt: skip
    assert sorted(ids) == sorted(e["event_id"] for e in events)
    dead = await read_from(stack.kafka_brokers, dlq_before, until=1.0)
    ours = [m for m in dead if str(m["body"]).find(user_id) >= 0]
    assert ours == []
    assert await dead_letters_of(audit.db, user_id) == []


@pytest_asyncio.fixture(scope="module")
async def audit_by_name(stack: Stack, audit: AuditPair) -> AsyncIterator[Service]:
    """The audit API under an app-id of its own (no subscription is scoped to it), on the
    same database: the CLI reaches it by name through Dapr service invocation, and no other
    audit-log-service on this machine (other test sessions, `make run`) can answer."""
    app_id = f"audit-cli-{uuid.uuid4().hex[:6]}"
    spec, consumer = service_spec(
        stack,
        app_id,
        command=[str(Path(sys.executable).parent / "audit-log-service")],
        env={"DATABASE_URL": audit.db.url},
        role="audit-log-service",  # its access control (the CLI may invoke it), its scopes
    )
    service = start_service(stack, spec, consumer)
    try:
        yield service
    finally:
        service.app.stop()


def taskevents_cli(*args: str, port: int) -> Any:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "taskevents"), "--dapr-http-port", str(port), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def test_a_dead_letter_is_listed_replayed_and_discarded_through_api_and_cli(
    audit: AuditPair, audit_by_name: Service, cluster: Cluster, publisher: EventPublisher,
    http: httpx.AsyncClient, unique: str,
) -> None:  # fmt: skip
    user_id = f"user-{unique}"
    # Valid events that some subscriber gave up on land in the dead-letter topic as they
    # were; publishing them there directly stands in for that subscriber.
    first, second = (
        TaskEvent.create(LOAD_TYPE, task_id=f"task-{unique}-{n}", user_id=user_id) for n in (1, 2)
    )
    for event in (first, second):
        await publisher.publish(event, topic=DLQ_TOPIC)

    ada = bearer("ada", operator=True)  # an operator: who acts is the token's subject

    async def listed() -> list[dict[str, Any]] | None:
        response = await http.get(
            f"{audit.url}/audit/dead-letters",
            params={"type": LOAD_TYPE, "status": "new", "limit": 500},
            headers=ada,
        )
        response.raise_for_status()
        items = [d for d in response.json()["items"] if d["user_id"] == user_id]
        return items if len(items) == 2 else None

    letters = {d["event_id"]: d for d in await eventually(listed, what="two dead letters")}
    letter = letters[first.event_id]
    assert letter["original_topic"] == DLQ_TOPIC  # published there directly

    # The API: operators only; show, replay (then the event is in the audit log), discard.
    one = f"{audit.url}/audit/dead-letters/{letter['id']}"
    assert (await http.get(one)).status_code == 401
    assert (await http.post(f"{one}/replay", headers=bearer(user_id))).status_code == 403
    response = await http.get(one, headers=ada)
    assert response.json()["raw"] == letter["raw"]
    response = await http.post(f"{one}/replay", headers=ada)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "replayed"
    assert response.json()["replayed_by"] == "ada"
    assert response.json()["replay_count"] == 1

    async def in_the_audit_log() -> list[str] | None:
        ids = await stored_ids(audit.db, user_id)
        return ids if first.event_id in ids else None

    await eventually(in_the_audit_log, what="the replayed event", check=audit.service.check_alive)
    response = await http.delete(one, headers=ada)
    assert response.json()["status"] == "discarded"
    assert response.json()["discarded_by"] == "ada"
    response = await http.post(f"{one}/replay", headers=ada)
    assert response.status_code == 409
    missing = await http.get(f"{audit.url}/audit/dead-letters/999999999", headers=ada)
    assert missing.status_code == 404

    # The CLI, through its sidecar and Dapr service invocation.
    target = ["--audit-app-id", audit_by_name.app_id]
    port = cluster.cli.dapr_http_port
    other = letters[second.event_id]
    page = taskevents_cli("dlq", *target, "list", "--type", LOAD_TYPE, "--limit", "500", port=port)
    assert other["id"] in [d["id"] for d in page["items"]]
    shown = taskevents_cli("dlq", *target, "show", str(other["id"]), port=port)
    assert shown["event_id"] == second.event_id
    # --operator: the subject of the development token the CLI mints.
    replayed = taskevents_cli(
        "dlq", *target, "replay", str(other["id"]), "--operator", "grace", port=port
    )
    assert replayed["replayed_by"] == "grace"

    async def second_in_the_audit_log() -> list[str] | None:
        ids = await stored_ids(audit.db, user_id)
        return ids if second.event_id in ids else None

    await eventually(second_in_the_audit_log, what="the event replayed by the CLI")
    # With --token, the token's subject acts, whatever --operator says.
    hopper = token("hopper", operator=True)
    discarded = taskevents_cli(
        "--token", hopper, "dlq", *target, "discard", str(other["id"]), "--operator", "grace",
        port=port,
    )  # fmt: skip
    assert discarded["status"] == "discarded"
    assert discarded["discarded_by"] == "hopper"


async def test_pagination_returns_every_row_once_while_rows_keep_arriving(
    audit: AuditPair, http: httpx.AsyncClient, unique: str
) -> None:
    user_id = f"user-{unique}"
    pool = await create_pool(audit.db.url, PoolSettings(max_size=2))
    writer = PostgresAuditLog(pool, SchemaStatus(migrated=True), acquire_timeout_seconds=5)
    base = datetime(2031, 3, 1, tzinfo=UTC)

    def batch(start: int, count: int) -> list[tuple[TaskEvent, Delivery]]:
        # Timestamps spread over two days and interleaved, so that new rows land before,
        # between and after the rows already paged through.
        return [
            (
                TaskEvent.create(
                    LOAD_TYPE,
                    task_id=f"task-{unique}",
                    user_id=user_id,
                    timestamp=base + timedelta(seconds=(n * 7919) % 172_800),
                    event_id=f"{user_id}-{n}",
                ),
                Delivery(),
            )
            for n in range(start, start + count)
        ]

    as_user = bearer(user_id)
    try:
        await writer.record_events(batch(0, 1_000))
        before = {f"{user_id}-{n}" for n in range(1_000)}
        seen: list[str] = []
        cursor: str | None = None
        next_new = 1_000
        while True:
            params: dict[str, Any] = {"user_id": user_id, "limit": 37}
            if cursor:
                params["cursor"] = cursor
            response = await http.get(f"{audit.url}/audit/events", params=params, headers=as_user)
            assert response.status_code == 200, response.text
            page = response.json()
            seen += [item["event_id"] for item in page["items"]]
            await writer.record_events(batch(next_new, 25))  # inserts continue meanwhile
            next_new += 25
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))  # nothing twice
        assert before <= set(seen)  # everything that was there, once

        # The same rows through the other read paths.
        history = (
            await http.get(f"{audit.url}/audit/tasks/task-{unique}/history", headers=as_user)
        ).json()
        stamps = [item["timestamp"] for item in history["items"]]
        assert stamps == sorted(stamps)
        stats = await http.get(
            f"{audit.url}/audit/stats",
            params={"since": base.isoformat(), "until": (base + timedelta(days=2)).isoformat()},
            headers=as_user,
        )
        assert stats.status_code == 200, stats.text
        assert stats.json()["by_type"][LOAD_TYPE] == next_new
        assert sum(hour["count"] for hour in stats.json()["by_hour"]) == next_new
    finally:
        await close_pool(pool)

    bad = await http.get(f"{audit.url}/audit/events", params={"limit": 501}, headers=as_user)
    assert bad.status_code == 422
    bad = await http.get(f"{audit.url}/audit/events", params={"cursor": "garbage"}, headers=as_user)
    assert bad.status_code == 422
    assert "cursor" in bad.text


async def test_partitions_are_made_ahead_and_retention_drops_old_months(
    audit: AuditPair, unique: str
) -> None:
    pool = await create_pool(audit.db.url, PoolSettings(max_size=1))
    log = PostgresAuditLog(
        pool, SchemaStatus(migrated=True), acquire_timeout_seconds=5, partitions_ahead_months=4
    )
    connection = await asyncpg.connect(audit.db.url)
    try:
        # A row stored 14 months ago (its partition made for it), and one stored now.
        await connection.execute(
            "SELECT audit_events_ensure_partitions(now() - interval '14 months', 0)"
        )
        old, new = f"{unique}-old", f"{unique}-new"
        for event_id, months_ago in ((old, 14), (new, 0)):
            await connection.execute(
                "WITH claimed AS (INSERT INTO audit_event_ids (event_id, received_at)"
                "  VALUES ($1, now() - make_interval(months => $2))"
                "  RETURNING event_id, received_at)"
                " INSERT INTO audit_events (event_id, type, task_id, user_id, occurred_at,"
                "                           received_at)"
                " SELECT event_id, 'task.created', 't', 'u', received_at, received_at"
                "   FROM claimed",
                event_id,
                months_ago,
            )

        assert await log.maintain_partitions(retention_months=None) == []  # keeps everything
        dropped = await log.maintain_partitions(retention_months=6)

        assert len(dropped) >= 8  # 14 months back down to 6: at least the oldest 8
        partitions = await connection.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_events'::regclass"
        )
        names = {row["relname"] for row in partitions}
        ahead = await connection.fetchval(
            "SELECT audit_events_partition_name(date_trunc('month', now()) + interval '4 months')"
        )
        assert ahead in names  # made ahead of need
        assert not names & set(dropped)
        stored = await connection.fetch(
            "SELECT event_id FROM audit_event_ids WHERE event_id = ANY($1::text[])", [old, new]
        )
        assert [row["event_id"] for row in stored] == [new]  # the old id forgotten with its month
        assert (
            await connection.fetchval("SELECT count(*) FROM audit_events WHERE event_id = $1", new)
            == 1
        )
    finally:
        await connection.close()
        await close_pool(pool)
