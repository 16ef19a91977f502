"""The event flow over a Kafka broker that only speaks SASL_SSL (SCRAM-SHA-512 over TLS,
a CA and SCRAM users made here): an event published through one sidecar reaches
audit-log-service beside another and lands in its table, and is on the topic for a direct
client (taskevents.kafka's settings, as the ops console reads it); a wrong password is
refused, clearly."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from ops_console.adapters.kafka import KafkaBroker
from ops_console.ports import ServiceUnavailableError
from taskevents.events import TaskEvent
from taskevents_cli.devrun import RunningApp, start_app
from tests.support.certificates import make_ca
from tests.support.cluster import Service, daprd_env, refusal_at_start, service_spec
from tests.support.kafka import TOPIC, end_offsets, read_from, wait_until_consuming
from tests.support.sasl_kafka import SaslKafkaBroker, use_sasl_ssl
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

AUDITED_TYPE = "transport.test.sasl"


@pytest_asyncio.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SaslKafkaBroker]:
    broker = SaslKafkaBroker(tmp_path_factory.mktemp("sasl-kafka"))
    started = time.monotonic()
    broker.prepare()
    broker.launch()
    try:
        await broker.wait_answering()
        print(  # noqa: T201 - the start-up time is reported with -s
            f"SASL_SSL broker: prepared and answering after {time.monotonic() - started:.1f}s "
            f"(JVM to first SASL answer {broker.start_seconds:.1f}s)"
        )
        yield broker
    finally:
        broker.stop()


def start_over_sasl(
    stack: Stack,
    broker: SaslKafkaBroker,
    app_id: str,
    *,
    replica: int,
    with_app: bool = True,
    password: str | None = None,
    ca_pem: str | None = None,
) -> tuple[RunningApp, str]:
    """A sidecar (and its app) whose Kafka components are rendered for SASL_SSL, the
    credentials and CA coming through its secret store."""
    spec, consumer = service_spec(stack, app_id, replica=replica, with_app=with_app)
    assert use_sasl_ssl(spec.resources_paths[0]) >= 1
    app = start_app(
        spec,
        daprd=stack.daprd,
        log_dir=stack.log_dir / f"{app_id}-sasl-{replica}",
        daprd_env={**daprd_env(stack), **broker.daprd_env(password=password, ca_pem=ca_pem)},
    )
    return app, consumer


def started(app: RunningApp) -> RunningApp:
    try:
        app.wait_ready()
    except BaseException:
        app.stop()
        raise
    return app


@pytest_asyncio.fixture(scope="module")
async def audit(stack: Stack, broker: SaslKafkaBroker) -> AsyncIterator[Service]:
    app, consumer = start_over_sasl(stack, broker, "audit-log-service", replica=31)
    service = Service(app=started(app), consumer_groups=[consumer])
    try:
        await wait_until_consuming(broker.client_settings(), service.consumer_groups)
        yield service
    finally:
        app.stop()


@pytest.fixture(scope="module")
def publisher_sidecar(stack: Stack, broker: SaslKafkaBroker) -> Iterator[Service]:
    app, consumer = start_over_sasl(stack, broker, "taskevents-cli", replica=32, with_app=False)
    yield Service(app=started(app), consumer_groups=[consumer])
    app.stop()


async def publish(stack: Stack, sidecar: Service, event: TaskEvent) -> None:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.post(
            f"http://127.0.0.1:{sidecar.dapr_http_port}/v1.0/publish/kafka-pubsub/{TOPIC}",
            params={"metadata.partitionKey": event.task_id},
            content=event.to_json(),
            headers={"dapr-api-token": stack.dapr_api_token, "content-type": "application/json"},
        )
    assert response.status_code == 204, response.text


async def test_an_event_published_over_sasl_ssl_lands_in_the_audit_log(
    stack: Stack, broker: SaslKafkaBroker, audit: Service, publisher_sidecar: Service
) -> None:
    event = TaskEvent.create(
        AUDITED_TYPE, task_id=f"task-{uuid.uuid4()}", user_id=f"user-{uuid.uuid4()}"
    )
    before = await end_offsets(broker.client_settings(), TOPIC)

    await publish(stack, publisher_sidecar, event)

    async def audited() -> asyncpg.Record | None:
        connection = await asyncpg.connect(stack.database_url)
        try:
            row: asyncpg.Record | None = await connection.fetchrow(
                "SELECT event_id, type, task_id FROM audit_events WHERE event_id = $1",
                event.event_id,
            )
            return row
        finally:
            await connection.close()

    row = await eventually(
        audited, what="the event in the audit log", timeout=30, check=audit.check_alive
    )
    assert (row["type"], row["task_id"]) == (AUDITED_TYPE, event.task_id)
    # The same message, read straight from the topic by a SASL_SSL client.
    messages = await read_from(broker.client_settings(), before)
    on_topic = [m for m in messages if _event_id(m) == event.event_id]
    assert len(on_topic) == 1, messages
    assert on_topic[0]["key"] == event.task_id


def _event_id(message: dict[str, Any]) -> Any:
    data = message["body"].get("data")
    return data.get("event_id") if isinstance(data, dict) else None


async def test_a_client_with_a_wrong_password_is_refused(
    broker: SaslKafkaBroker, caplog: pytest.LogCaptureFixture
) -> None:
    settings = broker.client_settings(password="not-the-password")
    producer = AIOKafkaProducer(**settings.client_options(), request_timeout_ms=5000)
    # aiokafka raises "Unable to bootstrap" and logs why.
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    await producer.stop()
    refusal = (
        "SaslAuthenticationFailed: Authentication failed during authentication due to "
        "invalid credentials with SASL mechanism SCRAM-SHA-512"
    )
    assert refusal in caplog.text, caplog.text


async def test_a_sidecar_with_a_wrong_password_refuses_to_start(
    stack: Stack, broker: SaslKafkaBroker
) -> None:
    app, _ = start_over_sasl(
        stack, broker, "taskevents-cli", replica=33, with_app=False, password="not-the-password"
    )
    message = refusal_at_start(app)
    assert "Fatal error from runtime: process component kafka-pubsub error" in message, message
    assert (
        "SASL Authentication failed: Authentication failed during authentication due to "
        "invalid credentials with SASL mechanism SCRAM-SHA-512" in message
    ), message


async def test_a_sidecar_that_does_not_trust_the_brokers_certificate_refuses_to_start(
    stack: Stack, broker: SaslKafkaBroker, tmp_path: Path
) -> None:
    other_ca = make_ca(tmp_path, "not-the-kafka-ca")
    app, _ = start_over_sasl(
        stack, broker, "taskevents-cli", replica=34, with_app=False, ca_pem=other_ca.pem
    )
    message = refusal_at_start(app)
    assert "Fatal error from runtime: process component kafka-pubsub error" in message, message
    assert "x509: certificate signed by unknown authority" in message, message


async def test_the_ops_console_reads_the_topic_over_sasl_ssl(broker: SaslKafkaBroker) -> None:
    producer = AIOKafkaProducer(**broker.client_settings().client_options())
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC, b"{}", key=b"console")
    finally:
        await producer.stop()
    console = KafkaBroker(broker.client_settings(), topics=[TOPIC], timeout_seconds=5.0)
    try:
        assert await console.depth(TOPIC) >= 1
    finally:
        await console.close()
    wrong = KafkaBroker(
        broker.client_settings(password="not-the-password"), topics=[TOPIC], timeout_seconds=5.0
    )
    with pytest.raises(ServiceUnavailableError, match=r"kafka at .*"):
        await wrong.depth(TOPIC)
    await wrong.close()
