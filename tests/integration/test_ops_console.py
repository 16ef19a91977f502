"""The ops console against the real stack: its JSON is what the sidecars, daprd's metrics,
the broker and the services say — apps with their daprd, a subscription's dead-letter
topic and bulk settings, delivery counts that grow with published events, lag of a group
that stopped consuming, a dead letter replayed into the audit log, the path of a task."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from taskevents.events import EventType, TaskEvent
from taskevents.publisher import EventPublisher
from tests.conftest import Cluster
from tests.support.cluster import Service
from tests.support.console import (
    make_dead_letter,
    operator_token,
    running_console,
    stop_a_consumer_group,
)
from tests.support.kafka import TOPIC
from tests.support.stack import RUN_ID, Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

STOPPED_GROUP = f"ops-console-test-stopped-{RUN_ID}"


@pytest.fixture(scope="module")
def console(stack: Stack, cluster: Cluster) -> Iterator[Service]:
    with running_console(stack, cluster, [STOPPED_GROUP]) as service:
        yield service


@pytest_asyncio.fixture
async def api(console: Service) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {operator_token()}"}
    async with httpx.AsyncClient(base_url=console.url, headers=headers, timeout=20) as client:
        yield client


async def get(api: httpx.AsyncClient, path: str) -> Any:
    response = await api.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def test_the_development_login_mints_an_operator_token_through_websocket_service(
    console: Service,
) -> None:
    async with httpx.AsyncClient(base_url=console.url, timeout=20) as client:
        assert (await client.get("/api/apps")).status_code == 401
        response = await client.post("/login/dev-token", json={"user_id": "grace"})
        assert response.status_code == 200, response.text
        headers = {"Authorization": f"Bearer {response.json()['token']}"}
        assert (await client.get("/api/control-plane", headers=headers)).status_code == 200


async def test_apps_show_every_sidecar_with_its_daprd_readiness_and_uptime(
    api: httpx.AsyncClient, cluster: Cluster
) -> None:
    apps = {a["app_id"]: a for a in await get(api, "/api/apps")}
    assert set(apps) == {*cluster.services, "taskevents-cli", "ops-console"}
    for app_id, service in cluster.services.items():
        app = apps[app_id]
        assert app["sidecar_healthy"], app
        assert app["runtime_version"].startswith("1.18"), app
        assert (app["health"], app["ready"], app["failing"]) == ("healthy", "ready", None)
        assert app["app_port"] == service.app.spec.app_port
        assert app["instances"] == 1
        assert app["pid"] == service.app.sidecar.pid
        assert app["uptime_seconds"] > 0
    assert apps["taskevents-cli"]["ready"] == "no app"


async def test_one_app_shows_its_components_subscriptions_resiliency_and_logs(
    api: httpx.AsyncClient,
) -> None:
    detail = await get(api, "/api/apps/audit-log-service")
    assert "kafka-pubsub" in {c["name"] for c in detail["components"]}
    subscriptions = {s["topic"]: s for s in detail["subscriptions"]}
    events = subscriptions["task-events"]
    assert events["dead_letter_topic"] == "task-events-dlq"
    assert events["routes"] == ["/events/task-events/bulk"]
    assert events["type"] == "DECLARATIVE"
    assert events["bulk"]["enabled"] is True
    assert events["bulk"]["maxMessagesCount"] > 1
    assert subscriptions["task-events-dlq"]["metadata"]["rawPayload"] == "true"
    assert [r["metadata"]["name"] for r in detail["resiliency"]] == ["audit-log-resiliency"]
    assert detail["configuration"]["spec"]["metric"]["enabled"] is True
    assert any(name == "audit-log-service_app.log" for name in detail["logs"]), detail["logs"]


async def test_delivery_counts_grow_with_published_events(
    api: httpx.AsyncClient, publisher: EventPublisher, cluster: Cluster, unique: str
) -> None:
    def success(view: dict[str, Any], app_id: str) -> float:
        rows = [d for d in view["deliveries"] if (d["app_id"], d["topic"]) == (app_id, TOPIC)]
        return rows[0]["success"] if rows else 0.0

    before = await get(api, "/api/pubsub")
    for n in range(3):
        await publisher.publish(
            TaskEvent.create(EventType.TASK_UPDATED, task_id=f"{unique}-{n}", user_id=unique)
        )

    async def counted() -> dict[str, Any] | None:
        view = await get(api, "/api/pubsub")
        grown = all(
            success(view, app) >= success(before, app) + 3
            for app in ("audit-log-service", "notification-service", "websocket-service")
        )
        return view if grown else None

    view = await eventually(
        counted, timeout=60, what="deliveries counted", check=cluster.check_alive
    )
    groups = {(g["group"], g["topic"]) for g in view["groups"]}
    assert (cluster["audit-log-service"].consumer_groups[0], TOPIC) in groups
    assert view["dead_letter_depth"] is not None


async def test_a_stopped_consumer_shows_growing_lag_and_a_stall(
    api: httpx.AsyncClient, console: Service, stack: Stack, publisher: EventPublisher, unique: str
) -> None:
    await stop_a_consumer_group(stack.kafka_brokers, STOPPED_GROUP)

    def lag_of(view: dict[str, Any]) -> int | None:
        rows = [g for g in view["groups"] if (g["group"], g["topic"]) == (STOPPED_GROUP, TOPIC)]
        return rows[0]["lag"] if rows else None

    async def lag_known() -> tuple[int] | None:
        lag = lag_of(await get(api, "/api/pubsub"))
        return None if lag is None else (lag,)

    [known] = await eventually(lag_known, timeout=30, what="the stopped group's lag")
    published = 0

    async def stalled() -> dict[str, Any] | None:
        # Events keep coming, so the lag keeps growing from one sample to the next.
        nonlocal published
        await publisher.publish(
            TaskEvent.create(
                EventType.TASK_UPDATED, task_id=f"{unique}-{published}", user_id=unique
            )
        )
        published += 1
        view = await get(api, "/api/pubsub")
        lag = lag_of(view)
        stalls = [s for s in view["stalls"] if s["group"] == STOPPED_GROUP]
        return view if lag is not None and lag >= known + 2 and stalls else None

    view = await eventually(stalled, timeout=30, interval=0.5, what="a stall of the stopped group")
    [stall] = [s for s in view["stalls"] if s["group"] == STOPPED_GROUP]
    assert stall["members"] == 0
    assert stall["lag_now"] > stall["lag_before"]
    async with httpx.AsyncClient(timeout=10) as http:
        exported = (await http.get(f"{console.url}/metrics")).text
    assert f'taskevents_console_consumer_lag_messages{{group="{STOPPED_GROUP}"' in exported
    assert 'taskevents_console_dead_letter_depth_messages{topic="task-events-dlq"}' in exported


async def test_a_dead_letter_is_listed_replayed_and_lands_in_the_audit_log(
    api: httpx.AsyncClient, stack: Stack, cluster: Cluster, unique: str
) -> None:
    event = await make_dead_letter(stack.kafka_brokers, f"dlq-{unique}", f"user-{unique}")

    async def listed() -> dict[str, Any] | None:
        view = await get(api, "/api/dead-letters?status=new")
        mine = [i for i in view["items"] if i["event_id"] == event.event_id]
        return mine[0] if mine else None

    letter = await eventually(listed, timeout=60, what="the dead letter", check=cluster.check_alive)
    assert letter["original_topic"] == TOPIC
    assert (await get(api, f"/api/tasks/{event.task_id}"))["history"] == []

    replayed = await api.post(f"/api/dead-letters/{letter['id']}/replay")
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "replayed"
    assert replayed.json()["replayed_by"] == "console-operator"

    async def in_audit_log() -> list[dict[str, Any]] | None:
        history = (await get(api, f"/api/tasks/{event.task_id}"))["history"]
        return history or None

    history = await eventually(in_audit_log, timeout=60, what="the replayed event")
    assert [h["event_id"] for h in history] == [event.event_id]


async def test_a_tasks_path_shows_its_history_notifications_and_schedules(
    api: httpx.AsyncClient, publisher: EventPublisher, cluster: Cluster, unique: str
) -> None:
    task_id, user_id = f"path-{unique}", f"user-{unique}"
    created = TaskEvent.create(
        EventType.TASK_CREATED, task_id=task_id, user_id=user_id,
        payload={"title": "Water the plants", "user_email": f"{uuid.uuid4().hex}@example.com",
                 "recurrence": {"cron": "0 9 * * *", "timezone": "Europe/Berlin"}},
    )  # fmt: skip
    await publisher.publish(created)

    async def arrived() -> dict[str, Any] | None:
        path = await get(api, f"/api/tasks/{task_id}")
        done = path["history"] and path["notifications"]["items"] and path["schedules"]["items"]
        return path if done else None

    path = await eventually(arrived, timeout=60, what="the task's path", check=cluster.check_alive)
    assert [h["event_id"] for h in path["history"]] == [created.event_id]
    assert {n["event_id"] for n in path["notifications"]["items"]} == {created.event_id}
    assert path["schedules"]["items"][0]["cron"] == "0 9 * * *"
    tail = await get(api, "/api/events?limit=200")
    assert created.event_id in {e["event_id"] for e in tail["items"]}


async def test_the_control_plane_lists_the_sessions_sidecars(
    api: httpx.AsyncClient, cluster: Cluster
) -> None:
    processes = (await get(api, "/api/control-plane"))["processes"]
    pids = {p["pid"] for p in processes if p["program"] == "daprd"}
    assert {s.app.sidecar.pid for s in cluster.services.values()} <= pids
