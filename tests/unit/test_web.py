from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, generate_latest
from pydantic import SecretStr

from taskevents.cloudevents import REPLAY_FOR_ATTRIBUTE, CloudEvent
from taskevents.events import TaskEvent
from taskevents.settings import ServiceSettings
from taskevents.status import Outcome
from taskevents.web import (
    BulkEntry,
    EventHandler,
    ReadinessCheck,
    RunningServices,
    app_token,
    deliver_bulk,
    deliver_event,
    delivery_metadata,
    lifespan_state,
    probes_router,
    service_app,
)

EVENT = {
    "event_id": "e-1",
    "type": "task.created",
    "task_id": "t-1",
    "user_id": "u-1",
    "timestamp": "2026-11-22T10:15:00Z",
}


def envelope(data: object) -> str:
    return json.dumps({"id": "e-1", "source": "test", "type": "com.dapr.event.sent", "data": data})


class RecordingHandler:
    def __init__(self, outcome: Outcome | None = None) -> None:
        self.seen: list[TaskEvent] = []
        self.metadata: list[Mapping[str, str]] = []
        self.outcome = outcome or Outcome.success()

    async def __call__(self, event: TaskEvent, cloud_event: CloudEvent) -> Outcome:
        self.seen.append(event)
        self.metadata.append(dict(delivery_metadata()))
        return self.outcome


def client_for(handler: EventHandler, token: str | None = None) -> TestClient:
    """A subscription route as every service's api/subscriptions.py writes one."""
    router = APIRouter(dependencies=[app_token(SecretStr(token) if token is not None else None)])

    @router.post("/events")
    async def events(request: Request) -> JSONResponse:
        return await deliver_event(request, handler)

    app = FastAPI()
    app.include_router(router)
    return TestClient(app)


def test_event_reaches_the_handler_and_its_outcome_is_the_answer() -> None:
    handler = RecordingHandler(Outcome.retry("database down"))
    response = client_for(handler).post("/events", content=envelope(EVENT))
    assert response.json() == {"status": "RETRY"}
    assert [e.event_id for e in handler.seen] == ["e-1"]


def test_unparsable_messages_are_dropped_without_calling_the_handler() -> None:
    handler = RecordingHandler()
    client = client_for(handler)
    for body in ("{nope", envelope("plain text"), envelope({**EVENT, "task_id": ""})):
        assert client.post("/events", content=body).json() == {"status": "DROP"}
    assert handler.seen == []


def test_a_failing_handler_means_retry() -> None:
    async def broken(event: TaskEvent, cloud_event: CloudEvent) -> Outcome:
        raise ConnectionError("boom")

    response = client_for(broken).post("/events", content=envelope(EVENT))
    assert response.json() == {"status": "RETRY"}


def test_app_token_is_required_when_configured() -> None:
    handler = RecordingHandler()
    client = client_for(handler, token="s3cret")
    assert client.post("/events", content=envelope(EVENT)).status_code == 401
    wrong = client.post("/events", content=envelope(EVENT), headers={"dapr-api-token": "x"})
    assert wrong.status_code == 401
    right = client.post("/events", content=envelope(EVENT), headers={"dapr-api-token": "s3cret"})
    assert right.json() == {"status": "SUCCESS"}
    assert len(handler.seen) == 1


def test_delivery_metadata_reaches_the_handler_without_the_token() -> None:
    handler = RecordingHandler()
    client = client_for(handler, token="s3cret")
    client.post(
        "/events",
        content=envelope(EVENT),
        headers={"dapr-api-token": "s3cret", "__partition": "3", "__offset": "42"},
    )
    assert handler.metadata[0]["__partition"] == "3"
    assert handler.metadata[0]["__offset"] == "42"
    assert "dapr-api-token" not in handler.metadata[0]
    assert delivery_metadata() == {}


class DemoServices(RunningServices):
    def readiness_checks(self) -> Mapping[str, ReadinessCheck]:
        async def fine() -> str | None:
            return None

        async def down() -> str | None:
            return "connection refused"

        return {"db": fine, "smtp": down}

    def health_details(self) -> Mapping[str, object]:
        return {"connections": 3}


def test_health_and_readiness_come_from_the_typed_lifespan_state() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
        yield lifespan_state(DemoServices())

    app = FastAPI(lifespan=lifespan)
    app.include_router(probes_router("demo-service", DemoServices))
    with TestClient(app) as client:
        assert client.get("/health").json() == {
            "service": "demo-service",
            "status": "healthy",
            "connections": 3,
        }
        ready = client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["failing"] == {"smtp": "connection refused"}
        assert "taskevents_deliveries_total" in client.get("/metrics").text


def test_a_service_whose_lifespan_has_not_started_is_not_ready() -> None:
    app = FastAPI()
    app.include_router(probes_router("demo-service", DemoServices))
    client = TestClient(app)  # no `with`: the lifespan does not run
    assert client.get("/health").json() == {"service": "demo-service", "status": "healthy"}
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "not running" in ready.json()["failing"]["service"]


def test_an_event_over_the_size_limit_is_dropped_unread() -> None:
    handler = RecordingHandler()
    client = client_for(handler)
    client.app.state.max_event_bytes = 1024  # type: ignore[attr-defined]
    big = envelope({**EVENT, "payload": {"notes": "x" * 2000}})
    assert client.post("/events", content=big).json() == {"status": "DROP"}
    assert client.post("/events", content=envelope(EVENT)).json() == {"status": "SUCCESS"}
    assert [e.event_id for e in handler.seen] == ["e-1"]


def test_a_bulk_entry_over_the_size_limit_is_dropped_and_the_others_go_on() -> None:
    seen: list[str] = []

    async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
        seen.extend(e.event.event_id for e in entries)
        return [Outcome.success() for _ in entries]

    app = FastAPI()
    app.state.max_event_bytes = 1024

    @app.post("/events/bulk")
    async def bulk(request: Request) -> JSONResponse:
        return await deliver_bulk(request, handle)

    small = json.loads(envelope(EVENT))
    big = json.loads(envelope({**EVENT, "event_id": "e-2", "payload": {"n": "x" * 2000}}))
    body = {"entries": [{"entryId": "a", "event": small}, {"entryId": "b", "event": big}]}
    statuses = TestClient(app).post("/events/bulk", json=body).json()["statuses"]
    assert statuses == [{"entryId": "a", "status": "SUCCESS"}, {"entryId": "b", "status": "DROP"}]
    assert seen == ["e-1"]


def test_unknown_event_types_are_counted_as_other() -> None:
    handler = RecordingHandler()
    client = client_for(handler)
    invented = f"task.invented-{uuid.uuid4().hex}"
    client.post("/events", content=envelope({**EVENT, "type": invented}))
    metrics = generate_latest().decode()
    assert invented not in metrics
    assert 'taskevents_deliveries_total{route="/events",status="SUCCESS",type="other"}' in metrics


def limited_app() -> TestClient:
    app = service_app(
        "demo-service",
        "demo",
        lambda: _running(DemoServices()),
        DemoServices,
        ServiceSettings(max_request_bytes=2048),
    )

    @app.post("/api")
    async def api(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.post("/events/task-events")
    async def events(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    return TestClient(app)


@asynccontextmanager
async def _running(services: DemoServices) -> AsyncIterator[DemoServices]:
    yield services


def test_api_bodies_over_the_limit_are_answered_413_however_they_are_sent() -> None:
    with limited_app() as client:
        assert client.post("/api", content=b"x" * 2048).json() == {"received": 2048}
        declared = client.post("/api", content=b"x" * 4096)
        assert declared.status_code == 413
        assert "TASKEVENTS_MAX_REQUEST_BYTES" in declared.json()["detail"]

        def chunks() -> Iterator[bytes]:
            for _ in range(4):
                yield b"x" * 1024

        streamed = client.post("/api", content=chunks())  # no Content-Length
        assert streamed.status_code == 413
        # The sidecar's routes check each event's size instead.
        assert client.post("/events/task-events", content=b"x" * 4096).status_code == 200


class RecordingDeadLetters:
    """A DeadLetterSink that keeps what it was given, or refuses (the sidecar is away)."""

    def __init__(self, *, refusing: bool = False) -> None:
        self.letters: list[tuple[bytes, str | None, str]] = []
        self.refusing = refusing

    async def dead_letter(self, message: bytes, *, key: str | None, reason: str) -> None:
        if self.refusing:
            raise ConnectionError("sidecar unavailable")
        self.letters.append((message, key, reason))


def dead_lettering_app(sink: RecordingDeadLetters, handler: EventHandler) -> TestClient:
    app = FastAPI()

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        return await deliver_event(request, handler, dead_letters=sink)

    @app.post("/events/bulk")
    async def bulk(request: Request) -> JSONResponse:
        async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
            return [await handler(e.event, e.envelope) for e in entries]

        return await deliver_bulk(request, handle, dead_letters=sink)

    return TestClient(app)


def test_a_drop_is_dead_lettered_by_the_app_with_its_reason_and_key_then_succeeds() -> None:
    sink = RecordingDeadLetters()
    client = dead_lettering_app(sink, RecordingHandler(Outcome.drop("no such recipient")))
    body = envelope(EVENT)

    answer = client.post("/events", content=body, headers={"__key": "t-1"})
    unreadable = client.post("/events", content="not json", headers={"__key": "t-9"})

    assert answer.json() == unreadable.json() == {"status": "SUCCESS"}
    assert sink.letters[0] == (body.encode(), "t-1", "no such recipient")
    assert sink.letters[1][:2] == (b"not json", "t-9")
    assert sink.letters[1][2].startswith("body is not JSON")


def test_a_drop_stays_a_drop_when_the_dead_letter_cannot_be_published() -> None:
    sink = RecordingDeadLetters(refusing=True)
    client = dead_lettering_app(sink, RecordingHandler(Outcome.drop("no such recipient")))

    assert client.post("/events", content=envelope(EVENT)).json() == {"status": "DROP"}


def test_bulk_drops_are_dead_lettered_each_with_its_reason_and_key() -> None:
    sink = RecordingDeadLetters()
    client = dead_lettering_app(sink, RecordingHandler(Outcome.drop("refused")))
    good = json.loads(envelope(EVENT))
    bad = json.loads(envelope({**EVENT, "task_id": ""}))
    body = {
        "entries": [
            {"entryId": "a", "event": good, "metadata": {"__key": "t-1"}},
            {"entryId": "b", "event": bad, "metadata": {"__key": "t-2"}},
        ]
    }

    statuses = client.post("/events/bulk", json=body).json()["statuses"]

    assert statuses == [
        {"entryId": "a", "status": "SUCCESS"},
        {"entryId": "b", "status": "SUCCESS"},
    ]
    by_key = {key: (json.loads(message), reason) for message, key, reason in sink.letters}
    assert by_key["t-1"] == (good, "refused")
    assert by_key["t-2"][0] == bad
    assert "task_id" in by_key["t-2"][1]


# --- A replayed dead letter is for the app that gave up on it ----------------------------


def replay_of(data: object, replay_for: str) -> dict[str, object]:
    return {**json.loads(envelope(data)), REPLAY_FOR_ATTRIBUTE: replay_for}


def replaying_app(app_id: str, handler: RecordingHandler) -> TestClient:
    """A subscriber whose app id is `app_id`, with a single and a bulk route."""
    app = FastAPI()
    app.state.app_id = app_id  # as service_app sets it

    @app.post("/events")
    async def events(request: Request) -> JSONResponse:
        return await deliver_event(request, handler)

    @app.post("/events/bulk")
    async def bulk(request: Request) -> JSONResponse:
        async def handle(entries: Sequence[BulkEntry]) -> list[Outcome]:
            return [await handler(e.event, e.envelope) for e in entries]

        return await deliver_bulk(request, handle)

    return TestClient(app)


def skipped(route: str, app: str) -> float:
    value = REGISTRY.get_sample_value(
        "taskevents_replays_for_other_apps_total", {"route": route, "app": app}
    )
    return value or 0.0


def test_a_replay_for_another_app_is_acknowledged_without_being_handled() -> None:
    handler = RecordingHandler()
    client = replaying_app("websocket-service", handler)
    before = skipped("/events", "notification-service")

    answer = client.post("/events", json=replay_of(EVENT, "notification-service"))

    assert answer.json() == {"status": "SUCCESS"}
    assert handler.seen == []
    assert skipped("/events", "notification-service") == before + 1


def test_a_replay_for_this_app_and_a_replay_for_everyone_are_handled() -> None:
    handler = RecordingHandler()
    client = replaying_app("websocket-service", handler)

    own = client.post("/events", json=replay_of(EVENT, "websocket-service"))
    everyone = client.post("/events", content=envelope({**EVENT, "event_id": "e-2"}))

    assert own.json() == everyone.json() == {"status": "SUCCESS"}
    assert [e.event_id for e in handler.seen] == ["e-1", "e-2"]


def test_a_replay_for_another_app_is_not_judged_here_even_when_unreadable() -> None:
    handler = RecordingHandler(Outcome.drop("never"))
    client = replaying_app("websocket-service", handler)

    answer = client.post("/events", json=replay_of({"type": ""}, "audit-log-service"))

    assert answer.json() == {"status": "SUCCESS"}  # not dropped: not ours to dead-letter
    assert handler.seen == []


def test_bulk_entries_replayed_for_another_app_are_acknowledged_the_others_handled() -> None:
    handler = RecordingHandler()
    client = replaying_app("notification-service", handler)
    before = skipped("/events/bulk", "websocket-service")
    body = {
        "entries": [
            {"entryId": "a", "event": replay_of(EVENT, "websocket-service")},
            {
                "entryId": "b",
                "event": replay_of({**EVENT, "event_id": "e-2"}, "notification-service"),
            },
            {"entryId": "c", "event": json.loads(envelope({**EVENT, "event_id": "e-3"}))},
        ]
    }

    statuses = client.post("/events/bulk", json=body).json()["statuses"]

    assert statuses == [{"entryId": x, "status": "SUCCESS"} for x in ("a", "b", "c")]
    assert [e.event_id for e in handler.seen] == ["e-2", "e-3"]
    assert skipped("/events/bulk", "websocket-service") == before + 1


def test_service_app_knows_its_app_id_for_the_replay_rule() -> None:
    with limited_app() as client:
        assert client.app.state.app_id == "demo-service"  # type: ignore[attr-defined]
