"""recurring-task-service through the real stack: a schedule accepted over HTTP publishes
`task.recurring.triggered` through its sidecar when due, and the events reach the audit log."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Cluster
from tests.integration.test_delivery import audit_rows
from tests.support.authorization import bearer
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


async def test_schedule_publishes_triggered_events_when_due(
    cluster: Cluster, http: httpx.AsyncClient, unique: str
) -> None:
    service = cluster["recurring-task-service"]
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    http.headers.update(bearer(user_id))  # the user works their own schedule
    response = await http.post(
        f"{service.url}/schedules",
        json={
            "task_id": task_id,
            "user_id": user_id,
            "interval_seconds": 1,
            "payload": {"title": "Stretch"},
        },
    )
    assert response.status_code == 201, response.text
    schedule = response.json()

    async def triggered() -> list[dict[str, Any]] | None:
        rows = await audit_rows(http, cluster, user_id, task_id)
        fired = [r for r in rows if r["type"] == "task.recurring.triggered"]
        return fired if len(fired) >= 3 else None

    try:
        fired = await eventually(
            triggered, timeout=45, what="three triggered events", check=cluster.check_alive
        )
    finally:
        await http.delete(f"{service.url}/schedules/{schedule['id']}")
    assert all(r["payload"]["title"] == "Stretch" for r in fired)
    assert all(r["payload"]["schedule_id"] == schedule["id"] for r in fired)
    occurrences = [r["payload"]["occurrence"] for r in fired]
    assert len(set(occurrences)) == len(occurrences)
    assert len({r["event_id"] for r in fired}) == len(fired)


async def test_invalid_schedule_is_a_422_with_a_clear_message(
    cluster: Cluster, http: httpx.AsyncClient, unique: str
) -> None:
    service = cluster["recurring-task-service"]
    http.headers.update(bearer("u"))
    response = await http.post(
        f"{service.url}/schedules",
        json={"task_id": f"t-{unique}", "user_id": "u", "cron": "61 * * * *"},
    )
    assert response.status_code == 422
    assert "cron" in response.text.lower()
    response = await http.post(
        f"{service.url}/schedules",
        json={"task_id": f"t-{unique}", "user_id": "u", "cron": "0 9 * * *",
              "timezone": "Mars/Olympus"},
    )  # fmt: skip
    assert response.status_code == 422
    assert "Mars/Olympus" in response.text
