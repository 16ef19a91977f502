"""Dapr decides who may talk to whom (docs/architecture.md, "Service-to-service security"):
sidecars invoke each other over mTLS with certificates from the stack's Sentry, the audit
log's sidecar lets only named callers reach named routes, and the Kafka components let an
app publish and subscribe only to its own topics. Real daprd and Sentry throughout."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from taskevents.events import TaskEvent
from tests.conftest import Cluster
from tests.support.authorization import bearer
from tests.support.cluster import VENV_BIN, Service, service_spec, start_service
from tests.support.stack import ROOT, Stack

pytestmark = pytest.mark.integration

CALLERS = ("websocket-service", "notification-service", "taskevents-cli")


@pytest_asyncio.fixture(scope="module")
async def audit(stack: Stack, cluster: Cluster) -> AsyncIterator[Service]:
    """audit-log-service under an app-id nobody else on this machine uses (other sessions
    and `make run` answer to "audit-log-service"), with its production configuration."""
    spec, consumer = service_spec(
        stack,
        f"audit-sec-{uuid.uuid4().hex[:6]}",
        command=[str(VENV_BIN / "audit-log-service")],
        role="audit-log-service",
    )
    service = start_service(stack, spec, consumer)
    try:
        yield service
    finally:
        service.app.stop()


@contextlib.contextmanager
def _sidecar(
    stack: Stack, app_id: str, *, mtls: bool = True, replica: int = 41
) -> Iterator[Service]:
    """A sidecar without an app, under a production app-id: a caller as that app."""
    spec, consumer = service_spec(stack, app_id, with_app=False, replica=replica)
    if not mtls:
        spec.sentry_address = None
    service = start_service(stack, spec, consumer, replica=replica)
    try:
        yield service
    finally:
        service.app.stop()


@pytest.fixture(scope="module")
def callers(stack: Stack) -> Iterator[dict[str, Service]]:
    with contextlib.ExitStack() as started:
        yield {app_id: started.enter_context(_sidecar(stack, app_id)) for app_id in CALLERS}


@pytest.fixture(scope="module")
def plain(stack: Stack) -> Iterator[Service]:
    """An app under the shared configuration (every app but the audit log), answering
    everything it is asked, under an app-id of its own."""
    spec, consumer = service_spec(
        stack, f"plain-{uuid.uuid4().hex[:6]}", role="notification-service"
    )
    spec.command = [sys.executable, "-m", "tests.support.refusing_app", str(spec.app_port)]
    spec.env["PYTHONPATH"] = str(ROOT)
    service = start_service(stack, spec, consumer)
    try:
        yield service
    finally:
        service.app.stop()


@pytest.fixture(scope="module")
def without_mtls(stack: Stack) -> Iterator[Service]:
    """websocket-service's app-id, which the policies allow, on a sidecar without mTLS."""
    with _sidecar(stack, "websocket-service", mtls=False, replica=42) as service:
        yield service


@pytest_asyncio.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    # As an operator: what is refused here is refused by the callee's sidecar, whatever the
    # person; what is allowed reaches an app that still checks the bearer token.
    headers = {"dapr-api-token": stack.dapr_api_token, **bearer("acl-operator", operator=True)}
    async with httpx.AsyncClient(timeout=20.0, headers=headers) as http:
        yield http


async def invoke(
    http: httpx.AsyncClient, caller: Service, callee: Service, method: str, path: str
) -> httpx.Response:
    return await http.request(
        method,
        f"http://127.0.0.1:{caller.dapr_http_port}/v1.0/invoke/{callee.app_id}/method/{path}",
    )


async def test_the_allowed_callers_reach_their_routes(
    client: httpx.AsyncClient, callers: dict[str, Service], audit: Service
) -> None:
    events = await invoke(
        client, callers["websocket-service"], audit, "GET", "audit/events?limit=1"
    )
    assert events.status_code == 200, events.text
    assert "items" in events.json()
    letters = await invoke(client, callers["taskevents-cli"], audit, "GET", "audit/dead-letters")
    assert letters.status_code == 200, letters.text
    assert "items" in letters.json()
    # A route below /audit/dead-letters/ (a letter that does not exist): the app answers.
    one = await invoke(
        client, callers["taskevents-cli"], audit, "GET", "audit/dead-letters/999999999"
    )
    assert one.status_code == 404, one.text


@pytest.mark.parametrize(
    ("caller", "method", "path"),
    [
        ("notification-service", "GET", "audit/events"),
        ("websocket-service", "GET", "audit/dead-letters"),
        ("websocket-service", "POST", "audit/events"),
        ("websocket-service", "GET", "audit/stats"),
        ("taskevents-cli", "GET", "audit/events"),
        ("taskevents-cli", "GET", "health"),
    ],
)
async def test_everything_else_is_refused_by_the_callees_sidecar(
    client: httpx.AsyncClient,
    callers: dict[str, Service],
    audit: Service,
    caller: str,
    method: str,
    path: str,
) -> None:
    response = await invoke(client, callers[caller], audit, method, path)
    assert response.status_code == 403, response.text
    assert "access control policy has denied access" in response.text


async def test_other_apps_cannot_be_invoked_at_all(
    client: httpx.AsyncClient, callers: dict[str, Service], plain: Service
) -> None:
    for caller in CALLERS:
        response = await invoke(client, callers[caller], plain, "GET", "attempts/x")
        assert response.status_code == 403, (caller, response.text)


async def test_a_sidecar_without_an_identity_from_sentry_cannot_invoke(
    client: httpx.AsyncClient, without_mtls: Service, audit: Service
) -> None:
    response = await invoke(client, without_mtls, audit, "GET", "audit/events?limit=1")
    assert response.status_code >= 500, response.text
    assert "items" not in response.text


async def test_only_the_apps_that_publish_task_events_may(
    client: httpx.AsyncClient, callers: dict[str, Service], cluster: Cluster
) -> None:
    # A type only the audit log keeps; the other services ignore it.
    event = TaskEvent.create(
        "audit.test.security", task_id=f"task-{uuid.uuid4().hex}", user_id="security"
    )
    body = event.model_dump(mode="json")

    async def publish(caller: Service, pubsub: str, topic: str) -> httpx.Response:
        return await client.post(
            f"http://127.0.0.1:{caller.dapr_http_port}/v1.0/publish/{pubsub}/{topic}", json=body
        )

    accepted = await publish(cluster.cli, "kafka-pubsub", "task-events")
    assert accepted.status_code == 204, accepted.text
    # notification-service may publish only dead letters; websocket-service nothing here.
    for caller in ("notification-service", "websocket-service"):
        refused = await publish(callers[caller], "kafka-pubsub", "task-events")
        assert refused.status_code == 403, (caller, refused.text)
        assert "ERR_PUBSUB_FORBIDDEN" in refused.text
    dead_letter = await publish(callers["notification-service"], "kafka-pubsub", "task-events-dlq")
    assert dead_letter.status_code == 204, dead_letter.text
