"""The schedule operations of recurring-task-service against the real service, Postgres,
sidecar and Kafka: preview, PATCH, pause and resume, and a manual trigger whose event id can
never be that of a scheduled occurrence."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest

from recurring_task_service.schedules import (
    cron_rule,
    occurrence_event_id,
    occurrence_iso,
    trigger_event_id,
)
from tests.conftest import Cluster
from tests.integration.test_recurring_replicas import triggered
from tests.support.authorization import bearer
from tests.support.kafka import TOPIC, end_offsets, read_from
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_preview_patch_pause_trigger_and_resume(
    cluster: Cluster, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    url = f"{cluster['recurring-task-service'].url}/schedules"
    task_id = f"ops-{unique}"
    http.headers.update(bearer(f"user-{unique}"))  # the user works their own schedule
    before = await end_offsets(stack.kafka_brokers, TOPIC)
    response = await http.post(
        url,
        json={"task_id": task_id, "user_id": f"user-{unique}", "cron": "30 2 * * *",
              "timezone": "Europe/Berlin", "payload": {"title": "Backup"}},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    schedule = response.json()
    schedule_url = f"{url}/{schedule['id']}"

    preview = (await http.get(f"{schedule_url}/occurrences", params={"next": 3})).json()
    rule = cron_rule("30 2 * * *", "Europe/Berlin")
    expected, cursor = [], datetime.fromisoformat(schedule["next_fire_at"])
    for _ in range(3):
        expected.append(occurrence_iso(cursor))
        following = rule.next_after(cursor)
        assert following is not None
        cursor = following
    assert preview["occurrences"] == expected

    # Every second from now on, then paused.
    response = await http.patch(schedule_url, json={"interval_seconds": 1})
    assert response.json()["cron"] is None

    async def fired() -> int | None:
        count: int = (await http.get(schedule_url)).json()["fire_count"]
        return count if count >= 2 else None

    await eventually(fired, what="the schedule firing", check=cluster.check_alive)
    paused = (await http.post(f"{schedule_url}/pause")).json()
    assert paused["state"] == "paused"

    # A manual trigger fires even while paused, under an id no occurrence can have.
    response = await http.post(f"{schedule_url}/trigger", headers={"Idempotency-Key": unique})
    assert response.status_code == 202
    manual_id = response.json()["event_id"]
    assert manual_id == trigger_event_id(uuid.UUID(schedule["id"]), unique)

    async def manual_published() -> list[dict[str, Any]] | None:
        events = triggered(await read_from(stack.kafka_brokers, before, until=0.5), {task_id})
        return events if any(e["event_id"] == manual_id for e in events) else None

    events = await eventually(manual_published, what="the manual event", check=cluster.check_alive)
    [manual] = [e for e in events if e["event_id"] == manual_id]
    assert manual["payload"]["trigger"] == "manual"
    assert manual["payload"]["title"] == "Backup"
    scheduled = [e for e in events if e["event_id"] != manual_id]
    assert all(
        e["event_id"]
        == occurrence_event_id(
            uuid.UUID(schedule["id"]), datetime.fromisoformat(e["payload"]["occurrence"])
        )
        for e in scheduled
    )
    # Nothing was claimed while paused.
    assert (await http.get(schedule_url)).json()["fire_count"] == paused["fire_count"]

    resumed = (await http.post(f"{schedule_url}/resume")).json()
    assert resumed["state"] == "active"

    async def fired_again() -> bool:
        count: int = (await http.get(schedule_url)).json()["fire_count"]
        before_pause: int = paused["fire_count"]
        return count > before_pause

    await eventually(fired_again, what="firing after resume", check=cluster.check_alive)
    assert (await http.delete(schedule_url)).status_code == 204
