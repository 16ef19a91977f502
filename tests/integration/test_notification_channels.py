"""notification-service with dependencies a test may break: its own SMTP sink (stopped and
started again), a local server speaking the Twilio API, a webhook receiver, a short rate
limit and quiet hours. It runs as its own app (own app id, state keys, ledger namespace)
beside its own daprd, subscribed to a topic of its own, so the shared cluster never sees
these events and the shared SMTP sink is never touched."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from notification_service.adapters.sms import TwilioSmsSender, WebhookSmsSender
from notification_service.ports import DeliveryRejectedError, DeliveryTemporarilyFailedError, Sms
from taskevents.events import EventType, TaskEvent
from taskevents.kafka import kafka_client_options
from taskevents.publisher import EventPublisher
from taskevents.secrets import SecretsWithFallback
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.cluster import (
    NOTIFY_TEST_TOPIC,
    VENV_BIN,
    Service,
    service_spec,
    start_service,
)
from tests.support.mailbox import ReceivedMail, Sink
from tests.support.notifiers import forget_ledger, own_sink, subscription, wait_until_mailing
from tests.support.notifiers import history as notifications_of
from tests.support.stack import RUN_ID, Stack, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

APP_ID = f"notify-it-{RUN_ID}"
TOPIC = NOTIFY_TEST_TOPIC  # the harness opens it to the session's apps
TWILIO_SID = "AC0123456789abcdef0123456789abcdef"
TWILIO_TOKEN = f"token-{RUN_ID}"
TWILIO_FROM = "+15005550006"
INVALID_NUMBER = "+15005550001"  # Twilio's own test number for "invalid To"
RATE_LIMIT = 3
RATE_WINDOW_SECONDS = 8


# --- a local HTTP server that records requests: Twilio's API shape, and a webhook ---------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    requests: list[Recorded] = field(default_factory=list)
    webhook_status: int = 200

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def twilio_messages(self) -> list[dict[str, list[str]]]:
        return [
            parse_qs(r.body.decode()) for r in self.requests if r.path.endswith("/Messages.json")
        ]


def receiver_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.requests.append(
                Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            if self.path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json":
                self.twilio(body)
            elif self.path == "/webhook":
                self.reply(receiver.webhook_status, {"accepted": receiver.webhook_status < 300})
            else:
                self.reply(404, {"code": 20404, "message": "not found", "status": 404})

        def twilio(self, body: bytes) -> None:
            expected = base64.b64encode(f"{TWILIO_SID}:{TWILIO_TOKEN}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {expected}":
                self.reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
                return
            if self.headers.get("Content-Type") != "application/x-www-form-urlencoded":
                self.reply(400, {"code": 20001, "message": "not a form", "status": 400})
                return
            form = parse_qs(body.decode())
            if form.get("To") == [INVALID_NUMBER]:
                message = f"The 'To' number {INVALID_NUMBER} is not a valid phone number."
                self.reply(400, {"code": 21211, "message": message, "status": 400})
                return
            self.reply(
                201,
                {"sid": "SM" + "0" * 32, "status": "queued", "to": form["To"][0],
                 "from": form["From"][0], "body": form["Body"][0]},
            )  # fmt: skip

        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), receiver_handler(Receiver(port=0)))
    found = Receiver(port=server.server_address[1])
    server.RequestHandlerClass = receiver_handler(found)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


# --- our own SMTP sink, which the tests may stop -------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def sink(stack: Stack) -> AsyncIterator[Sink]:
    async with own_sink(stack, "notify-it-sink") as sink:
        yield sink


# --- the service under test ---------------------------------------------------------------


@dataclass
class Notifier:
    service: Service
    publisher: EventPublisher

    @property
    def url(self) -> str:
        return self.service.url

    async def publish(self, event: TaskEvent) -> None:
        await self.publisher.publish(event, topic=TOPIC)


@pytest_asyncio.fixture(scope="module")
async def notifier(
    stack: Stack, cluster: Cluster, sink: Sink, receiver: Receiver
) -> AsyncIterator[Notifier]:
    admin = AIOKafkaAdminClient(**kafka_client_options(stack.kafka_brokers))
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
    spec, consumer = service_spec(
        stack,
        APP_ID,
        command=[str(VENV_BIN / "notification-service")],
        extra_resources=[subscription(APP_ID, TOPIC)],
        role="notification-service",
        env={
            "NOTIFY_SMTP_PORT": str(sink.port),
            "NOTIFY_LEDGER_NAMESPACE": APP_ID,
            "NOTIFY_SMS_PROVIDER": "twilio",
            "NOTIFY_TWILIO_BASE_URL": receiver.base_url,
            "NOTIFY_TWILIO_ACCOUNT_SID": TWILIO_SID,
            "NOTIFY_TWILIO_FROM": TWILIO_FROM,
            "NOTIFY_RATE_LIMIT_COUNT": str(RATE_LIMIT),
            "NOTIFY_RATE_LIMIT_WINDOW_SECONDS": str(RATE_WINDOW_SECONDS),
            "NOTIFY_DEFERRED_POLL_SECONDS": "0.5",
            "NOTIFY_SMTP_TIMEOUT_SECONDS": "5",
        },
    )
    # The Twilio token reaches only the sidecar, through the `envstore` secret store
    # (prefix TASKEVENTS_): a request the fake Twilio accepts proves it was read there.
    os.environ["TASKEVENTS_TWILIO_AUTH_TOKEN"] = TWILIO_TOKEN
    try:
        service = start_service(stack, spec, consumer)
    finally:
        del os.environ["TASKEVENTS_TWILIO_AUTH_TOKEN"]
    publisher = EventPublisher(
        pubsub_name="kafka-pubsub", topic=TOPIC,
        http_port=cluster.cli.dapr_http_port, grpc_port=cluster.cli.dapr_grpc_port,
    )  # fmt: skip
    notifier = Notifier(service, publisher)
    try:
        await wait_until_mailing(notifier.publish, sink, service, RUN_ID)
        yield notifier
    finally:
        await publisher.close()
        service.app.stop()
        await admin.delete_topics([TOPIC])
        await admin.close()
        await forget_ledger(stack, APP_ID)


async def put_preferences(notifier: Notifier, user_id: str, **preferences: Any) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.put(
            f"{notifier.url}/preferences/{user_id}", json=preferences, headers=bearer(user_id)
        )
    assert response.status_code == 200, response.text


async def history(notifier: Notifier, user_id: str) -> list[dict[str, Any]]:
    return await notifications_of(notifier.url, user_id)


def created(user_id: str, task_id: str, title: str, **payload: Any) -> TaskEvent:
    return TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id,
        payload={"title": title, **payload},
    )  # fmt: skip


# --- the tests ----------------------------------------------------------------------------


async def test_sms_through_the_twilio_api_with_the_token_from_the_secret_store(
    notifier: Notifier, receiver: Receiver, unique: str
) -> None:
    user_id = f"user-{unique}"
    await put_preferences(
        notifier, user_id, phone="+4915112345678", channels=["sms"], time_zone="Europe/Berlin"
    )
    title = "Zahnarzt anrufen und Termin für nächste Woche vereinbaren " * 3
    event = created(user_id, f"task-{unique}", title, due_at="2026-12-01T09:00:00Z")
    await notifier.publish(event)

    async def sent() -> list[dict[str, list[str]]]:
        return [m for m in receiver.twilio_messages() if m.get("To") == ["+4915112345678"]]

    [message] = await eventually(
        sent, what="the Twilio request", check=notifier.service.check_alive
    )
    assert message["From"] == [TWILIO_FROM]
    body = message["Body"][0]
    assert body.startswith("New task: Zahnarzt anrufen")
    assert "01 Dec 10:00 CET" in body  # the user's time zone
    assert len(body) <= 160  # one GSM-7 segment (ä, ü are in the GSM alphabet)
    [request] = [r for r in receiver.requests if b"4915112345678" in r.body]
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"

    async def recorded() -> list[dict[str, Any]]:
        return [e for e in await history(notifier, user_id) if e["status"] == "sent"]

    [entry] = await eventually(recorded, what="the SMS in the history")
    assert entry["channel"] == "sms"


async def test_a_number_twilio_refuses_is_recorded_as_rejected(
    notifier: Notifier, unique: str
) -> None:
    user_id = f"user-{unique}"
    await put_preferences(notifier, user_id, phone=INVALID_NUMBER, channels=["sms"])
    await notifier.publish(created(user_id, f"task-{unique}", "Never arrives"))

    async def rejected() -> list[dict[str, Any]]:
        return [e for e in await history(notifier, user_id) if e["status"] == "rejected"]

    [entry] = await eventually(rejected, what="the rejection", check=notifier.service.check_alive)
    assert "21211" in entry["reason"]


async def test_a_burst_past_the_rate_limit_is_summarised_in_one_digest(
    notifier: Notifier, sink: Sink, unique: str
) -> None:
    user_id, address = f"user-{unique}", f"burst-{unique}@example.com".lower()
    await put_preferences(notifier, user_id, email=address)
    titles = [f"Burst task {i}" for i in range(RATE_LIMIT + 3)]
    for i, title in enumerate(titles):
        await notifier.publish(created(user_id, f"task-{unique}-{i}", title))

    async def all_mailed() -> list[ReceivedMail] | None:
        mails = sink.mails_to(address)
        return mails if len(mails) >= RATE_LIMIT + 1 else None

    mails = await eventually(
        all_mailed, timeout=RATE_WINDOW_SECONDS + 40, what="the mails and the digest",
        check=notifier.service.check_alive,
    )  # fmt: skip
    singles = [m for m in mails if m.subject.startswith("New task: ")]
    digests = [m for m in mails if "more task notifications" in m.subject]
    assert len(singles) == RATE_LIMIT
    assert len(digests) == 1
    assert digests[0].subject == "3 more task notifications"
    summarised = {t for t in titles if t in (digests[0].part("text/plain") or "")}
    assert summarised | {m.subject.removeprefix("New task: ") for m in singles} == set(titles)
    assert len(summarised) == 3

    statuses = sorted(e["status"] for e in await history(notifier, user_id))
    assert statuses == sorted(["sent"] * (RATE_LIMIT + 1) + ["digested"] * 3)


async def test_quiet_hours_defer_until_the_window_ends_even_across_a_restart(
    notifier: Notifier, sink: Sink, unique: str
) -> None:
    user_id, address = f"user-{unique}", f"quiet-{unique}@example.com".lower()
    now = datetime.now(UTC)
    end = now + timedelta(seconds=12)
    await put_preferences(
        notifier, user_id, email=address, time_zone="UTC",
        quiet_hours={"start": (now - timedelta(hours=1)).strftime("%H:%M:%S"),
                     "end": end.strftime("%H:%M:%S")},
    )  # fmt: skip
    await notifier.publish(created(user_id, f"task-{unique}", "After the quiet"))
    urgent = created(user_id, f"task-{unique}-u", "Server on fire", priority="urgent")
    await notifier.publish(urgent)

    async def deferred() -> list[dict[str, Any]]:
        return [e for e in await history(notifier, user_id) if e["status"] == "deferred"]

    [entry] = await eventually(deferred, what="the deferral", check=notifier.service.check_alive)
    assert datetime.fromisoformat(entry["due_at"]) == end.replace(microsecond=0)
    [urgent_mail] = await eventually(lambda: _mails(sink, address, 1), what="the urgent mail")
    assert urgent_mail.subject == "New task: Server on fire"

    # Deferred notifications live in the ledger: a restart of the service loses none.
    app = notifier.service.app.app
    assert app is not None
    app.stop()
    app.start()
    notifier.service.app.wait_ready()

    mails = await eventually(
        lambda: _mails(sink, address, 2), timeout=60, what="the deferred mail",
        check=notifier.service.check_alive,
    )  # fmt: skip
    late = [m for m in mails if m.subject == "New task: After the quiet"]
    assert len(late) == 1
    assert datetime.now(UTC) >= end


async def _mails(sink: Sink, address: str, count: int) -> list[ReceivedMail] | None:
    mails = sink.mails_to(address)
    return mails if len(mails) >= count else None


# --- the SMS providers against real local HTTP servers, without the service ---------------


def sms(to: str = "+4915112345678") -> Sms:
    return Sms(recipient=to, body="New task: Pay rent", message_id="m-1", event_id="e-1")


async def test_webhook_provider_posts_json_and_sorts_failures(receiver: Receiver) -> None:
    sender = WebhookSmsSender(url=f"{receiver.base_url}/webhook", token="hook-secret")
    receiver.webhook_status = 200
    await sender.send(sms())
    request = [r for r in receiver.requests if r.path == "/webhook"][-1]
    assert json.loads(request.body) == {
        "to": "+4915112345678", "body": "New task: Pay rent", "message_id": "m-1",
        "event_id": "e-1",
    }  # fmt: skip
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer hook-secret"
    assert request.headers["idempotency-key"] == "m-1"

    receiver.webhook_status = 503
    with pytest.raises(DeliveryTemporarilyFailedError, match="503"):
        await sender.send(sms())
    receiver.webhook_status = 422
    with pytest.raises(DeliveryRejectedError, match="422"):
        await sender.send(sms())
    receiver.webhook_status = 200
    closed = WebhookSmsSender(url=f"http://127.0.0.1:{free_port()}/webhook", timeout_seconds=2)
    with pytest.raises(DeliveryTemporarilyFailedError):
        await closed.send(sms())


async def test_twilio_provider_request_shape_and_failures(receiver: Receiver) -> None:
    def twilio(token: str | None) -> TwilioSmsSender:
        secrets = SecretsWithFallback(None, {"TWILIO_AUTH_TOKEN": token})
        return TwilioSmsSender(
            base_url=receiver.base_url + "/", account_sid=TWILIO_SID, from_number=TWILIO_FROM,
            messaging_service_sid=None, secrets=secrets,
        )  # fmt: skip

    await twilio(TWILIO_TOKEN).send(sms("+4917600000001"))
    [form] = [m for m in receiver.twilio_messages() if m.get("To") == ["+4917600000001"]]
    assert form == {"To": ["+4917600000001"], "Body": ["New task: Pay rent"], "From": [TWILIO_FROM]}

    with pytest.raises(DeliveryRejectedError, match="21211"):
        await twilio(TWILIO_TOKEN).send(sms(INVALID_NUMBER))
    with pytest.raises(DeliveryTemporarilyFailedError, match="401"):  # credentials: retry
        await twilio("wrong").send(sms())
    with pytest.raises(DeliveryTemporarilyFailedError, match="no auth token"):
        await twilio(None).send(sms())
