"""The HTTP edges of recurring-task-service over in-memory fakes: the schedules API and
the subscription route (the app starts with a bootstrap of fakes instead of Postgres)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from recurring_task_service.app import create_app
from recurring_task_service.bootstrap import Services
from recurring_task_service.ports import (
    MissedRecord,
    ParkedEvent,
    ScheduleExistsError,
    ScheduleUpdate,
    StoreRefusedError,
    StoreUnavailableError,
    TaskChange,
)
from recurring_task_service.schedules import MissedReason, MissedRun, NewSchedule, Schedule
from recurring_task_service.settings import Settings
from taskevents.auth import verifier_from
from taskevents.events import TaskEvent
from tests.support.authorization import bearer, serving


class FakeSchedules:
    def __init__(self) -> None:
        self.by_id: dict[uuid.UUID, Schedule] = {}
        self.outbox: list[TaskEvent] = []
        self.missed_runs: list[MissedRecord] = []
        self.parked_events: dict[int, ParkedEvent] = {}
        self.down = False

    async def parked(self, *, limit: int) -> list[ParkedEvent]:
        self._check()
        return list(self.parked_events.values())[:limit]

    async def requeue(self, entry_id: int) -> bool:
        self._check()
        return self.parked_events.pop(entry_id, None) is not None

    async def create(self, new: NewSchedule) -> Schedule:
        self._check()
        for existing in self.by_id.values():
            if existing.task_id == new.task_id:
                raise ScheduleExistsError(new.task_id, existing.id)
        return self._store(new)

    async def get(self, schedule_id: uuid.UUID) -> Schedule | None:
        self._check()
        return self.by_id.get(schedule_id)

    async def list_for_user(self, user_id: str | None, *, limit: int) -> list[Schedule]:
        self._check()
        return [s for s in self.by_id.values() if user_id in (None, s.user_id)][:limit]

    async def delete(self, schedule_id: uuid.UUID) -> bool:
        self._check()
        return self.by_id.pop(schedule_id, None) is not None

    async def update(
        self,
        schedule_id: uuid.UUID,
        edit: Callable[[Schedule], ScheduleUpdate],
        *,
        cause: str | None = None,
    ) -> Schedule | None:
        self._check()
        current = self.by_id.get(schedule_id)
        if current is None:
            return None
        change = edit(current)
        self.by_id[schedule_id] = replace(
            current,
            rule=change.rule,
            payload=change.payload,
            options=change.options,
            paused=change.paused,
            next_fire_at=change.next_fire_at,
            active=change.active,
            cause=cause,
        )
        return self.by_id[schedule_id]

    async def enqueue(
        self,
        schedule_id: uuid.UUID,
        make_event: Callable[[Schedule], TaskEvent],
        *,
        cause: str | None = None,
    ) -> TaskEvent | None:
        self._check()
        current = self.by_id.get(schedule_id)
        if current is None:
            return None
        event = make_event(current)
        if all(e.event_id != event.event_id for e in self.outbox):
            self.outbox.append(event)
        return event

    async def missed(self, schedule_id: uuid.UUID, *, limit: int) -> list[MissedRecord]:
        return [r for r in self.missed_runs if r.schedule_id == schedule_id][:limit]

    async def put_for_task(self, new: NewSchedule, *, event_at: datetime) -> TaskChange:
        self._check()
        if new.task_id == "poison":
            raise RuntimeError("a bug met by one event only")
        if new.task_id == "refused":
            raise StoreRefusedError("DataError: unsupported Unicode escape sequence")
        await self.delete_for_task(new.task_id, event_at=event_at)
        self._store(new)
        return TaskChange.APPLIED

    async def delete_for_task(self, task_id: str, *, event_at: datetime) -> TaskChange:
        self._check()
        found = [s.id for s in self.by_id.values() if s.task_id == task_id]
        for schedule_id in found:
            del self.by_id[schedule_id]
        return TaskChange.APPLIED if found else TaskChange.NOTHING

    async def complete_task(
        self,
        task_id: str,
        *,
        completed_at: datetime,
        plan: Callable[[Schedule], datetime | None],
        cause: str | None = None,
    ) -> TaskChange:
        return TaskChange.NOTHING

    def _store(self, new: NewSchedule) -> Schedule:
        now = datetime.now(UTC)
        schedule = Schedule(
            id=uuid.uuid4(),
            task_id=new.task_id,
            user_id=new.user_id,
            rule=new.rule,
            payload=dict(new.payload),
            next_fire_at=new.next_fire_at,
            last_fired_at=None,
            fire_count=0,
            active=True,
            created_at=now,
            updated_at=now,
            options=new.options,
            paused=new.paused,
            cause=new.cause,
        )
        self.by_id[schedule.id] = schedule
        return schedule

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailableError("connection refused")


class RecordingWaker:
    def __init__(self) -> None:
        self.wake_ups: list[datetime] = []

    def wake_at(self, when: datetime) -> None:
        self.wake_ups.append(when)


async def database_fine() -> str | None:
    return None


@pytest.fixture
def schedules() -> FakeSchedules:
    return FakeSchedules()


@pytest.fixture
def waker() -> RecordingWaker:
    return RecordingWaker()


@pytest.fixture
def app(schedules: FakeSchedules, waker: RecordingWaker) -> FastAPI:
    @asynccontextmanager
    async def fakes(settings: Settings) -> AsyncIterator[Services]:
        yield Services(
            schedules=schedules,
            task_schedules=schedules,
            waker=waker,
            parked_outbox=schedules,
            database_ready=database_fine,
            sidecar_ready=database_fine,
            tokens=verifier_from(settings),
        )

    return create_app(Settings(app_api_token=None), bootstrap=fakes)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client as an operator, who may work every user's schedules (the per-user rules:
    test_recurring_authorization.py)."""
    async with serving(app, headers=bearer("ops", operator=True)) as client:
        yield client


def detail_text(response: httpx.Response) -> str:
    return str(response.json()["detail"])


async def test_create_an_interval_schedule(
    client: httpx.AsyncClient, waker: RecordingWaker
) -> None:
    response = await client.post(
        "/schedules",
        json={"task_id": "t1", "user_id": "u1", "interval_seconds": 2, "payload": {"a": 1}},
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["interval_seconds"] == 2
    assert body["cron"] is None
    assert body["timezone"] == "UTC"
    assert body["payload"] == {"a": 1}
    next_fire_at = datetime.fromisoformat(body["next_fire_at"])
    assert 2 <= (next_fire_at - datetime.now(UTC)).total_seconds() <= 3.1
    assert waker.wake_ups == [next_fire_at]


async def test_create_a_cron_schedule_and_read_it_back(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/schedules",
        json={"task_id": "t1", "user_id": "u1", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
    )
    schedule_id = created.json()["id"]

    fetched = await client.get(f"/schedules/{schedule_id}")
    listed = await client.get("/schedules", params={"user_id": "u1"})
    others = await client.get("/schedules", params={"user_id": "u2"})

    assert fetched.status_code == 200
    assert fetched.json() == created.json()
    assert [s["id"] for s in listed.json()["schedules"]] == [schedule_id]
    assert others.json()["schedules"] == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"cron": "0 9 * *"}, "expected 5 fields"),
        ({"cron": "0 24 * * *"}, "invalid cron expression"),
        ({"cron": "0 9 * * *", "timezone": "Europe/Atlantis"}, "unknown time zone"),
        ({"cron": "0 9 * * *", "interval_seconds": 60}, "exactly one"),
        ({"interval_seconds": 60, "max_count": 0}, "greater than or equal to 1"),
        (
            {
                "interval_seconds": 60,
                "starts_at": "2026-02-01T00:00:00Z",
                "ends_at": "2026-01-01T00:00:00Z",
            },
            "must be after starts_at",
        ),
        ({"interval_seconds": 60, "starts_at": "2026-02-01T00:00:00"}, "timezone"),
        ({}, "exactly one"),
        ({"interval_seconds": 0}, "greater than or equal to 1"),
    ],
)
async def test_invalid_schedules_are_422_with_a_clear_message(
    client: httpx.AsyncClient, body: dict[str, Any], message: str
) -> None:
    response = await client.post("/schedules", json={"task_id": "t1", "user_id": "u1", **body})

    assert response.status_code == 422
    assert message in detail_text(response)


async def test_a_second_schedule_for_a_task_is_a_conflict(client: httpx.AsyncClient) -> None:
    body = {"task_id": "t1", "user_id": "u1", "interval_seconds": 60}
    first = await client.post("/schedules", json=body)

    second = await client.post("/schedules", json=body)

    assert second.status_code == 409
    assert first.json()["id"] in detail_text(second)


async def test_delete_a_schedule(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/schedules", json={"task_id": "t1", "user_id": "u1", "interval_seconds": 60}
    )
    schedule_id = created.json()["id"]

    deleted = await client.delete(f"/schedules/{schedule_id}")
    again = await client.delete(f"/schedules/{schedule_id}")
    fetched = await client.get(f"/schedules/{schedule_id}")

    assert deleted.status_code == 204
    assert again.status_code == 404
    assert fetched.status_code == 404


async def test_database_down_is_503(client: httpx.AsyncClient, schedules: FakeSchedules) -> None:
    schedules.down = True

    response = await client.get("/schedules")

    assert response.status_code == 503
    assert "unavailable" in detail_text(response)


def cloud_event(event: TaskEvent) -> dict[str, Any]:
    return {
        "id": event.event_id,
        "specversion": "1.0",
        "source": "test",
        "type": "com.dapr.event.sent",
        "datacontenttype": "application/json",
        "data": event.model_dump(mode="json"),
        "topic": "task-events",
        "pubsubname": "kafka-pubsub",
    }


async def deliver(client: httpx.AsyncClient, event: TaskEvent) -> str:
    response = await client.post(
        "/events/task-events",
        json=cloud_event(event),
        headers={"content-type": "application/cloudevents+json"},
    )
    assert response.status_code == 200
    status: str = response.json()["status"]
    return status


async def test_subscription_sets_and_removes_a_task_schedule(
    client: httpx.AsyncClient, schedules: FakeSchedules
) -> None:
    created = TaskEvent.create(
        "task.created",
        task_id="t9",
        user_id="u9",
        payload={"title": "x", "recurrence": {"interval_seconds": 5}},
    )

    assert await deliver(client, created) == "SUCCESS"
    assert [s.task_id for s in schedules.by_id.values()] == ["t9"]

    deleted = TaskEvent.create("task.deleted", task_id="t9", user_id="u9")
    assert await deliver(client, deleted) == "SUCCESS"
    assert schedules.by_id == {}


async def test_one_bad_entry_of_a_batch_fails_alone(
    client: httpx.AsyncClient, schedules: FakeSchedules
) -> None:
    events = [
        TaskEvent.create(
            "task.created",
            task_id=task_id,
            user_id="u9",
            payload={"recurrence": {"interval_seconds": 60}},
        )
        for task_id in ("before", "poison", "refused", "after")
    ]
    body = {
        "entries": [
            {"entryId": str(i), "event": cloud_event(event)} for i, event in enumerate(events)
        ]
    }
    response = await client.post("/events/task-events/bulk", json=body)
    statuses = [s["status"] for s in response.json()["statuses"]]
    # The bug is retried (then dead-lettered) alone; the refused value is dropped at once.
    assert statuses == ["SUCCESS", "RETRY", "DROP", "SUCCESS"]
    assert sorted(s.task_id for s in schedules.by_id.values()) == ["after", "before"]


async def test_subscription_drops_an_invalid_recurrence(client: httpx.AsyncClient) -> None:
    event = TaskEvent.create(
        "task.created", task_id="t9", user_id="u9", payload={"recurrence": {"cron": "nope"}}
    )

    assert await deliver(client, event) == "DROP"


async def test_subscription_retries_when_the_database_is_down(
    client: httpx.AsyncClient, schedules: FakeSchedules
) -> None:
    schedules.down = True
    event = TaskEvent.create(
        "task.updated", task_id="t9", user_id="u9", payload={"recurrence": {"interval_seconds": 5}}
    )

    assert await deliver(client, event) == "RETRY"


async def test_health_names_the_service(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")

    assert response.json() == {"service": "recurring-task-service", "status": "healthy"}


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await client.post("/schedules", json={"task_id": "t1", "user_id": "u1", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_create_with_bounds_and_coalescing(client: httpx.AsyncClient) -> None:
    body = await create(
        client,
        interval_seconds=60,
        starts_at="2030-01-01T09:00:00+01:00",
        ends_at="2030-01-02T00:00:00Z",
        max_count=3,
        coalesce_missed=True,
    )

    assert body["next_fire_at"] == "2030-01-01T08:00:00Z"
    assert body["max_count"] == 3
    assert body["coalesce_missed"] is True
    assert body["state"] == "active"


async def test_preview_the_next_occurrences(client: httpx.AsyncClient) -> None:
    body = await create(client, interval_seconds=60, starts_at="2030-01-01T08:00:00Z", max_count=3)

    response = await client.get(f"/schedules/{body['id']}/occurrences", params={"next": 5})

    assert response.status_code == 200
    assert response.json()["occurrences"] == [
        "2030-01-01T08:00:00Z",
        "2030-01-01T08:01:00Z",
        "2030-01-01T08:02:00Z",
    ]


async def test_patch_changes_only_what_is_given(client: httpx.AsyncClient) -> None:
    body = await create(client, cron="0 9 * * *", timezone="Europe/Berlin", payload={"a": 1})

    renamed = await client.patch(f"/schedules/{body['id']}", json={"payload": {"a": 2}})
    rezoned = await client.patch(f"/schedules/{body['id']}", json={"timezone": "America/New_York"})
    interval = await client.patch(f"/schedules/{body['id']}", json={"interval_seconds": 30})

    assert renamed.json()["payload"] == {"a": 2}
    assert renamed.json()["next_fire_at"] == body["next_fire_at"]
    assert rezoned.json()["cron"] == "0 9 * * *"
    assert rezoned.json()["timezone"] == "America/New_York"
    assert rezoned.json()["next_fire_at"] != body["next_fire_at"]
    assert interval.json()["cron"] is None
    assert interval.json()["interval_seconds"] == 30
    assert interval.json()["payload"] == {"a": 2}


async def test_patch_with_an_invalid_cron_or_zone_is_a_422(client: httpx.AsyncClient) -> None:
    body = await create(client, interval_seconds=60)

    bad_cron = await client.patch(f"/schedules/{body['id']}", json={"cron": "0 24 * * *"})
    bad_zone = await client.patch(f"/schedules/{body['id']}", json={"timezone": "Nowhere/X"})
    missing = await client.patch(f"/schedules/{uuid.uuid4()}", json={"payload": {}})

    assert bad_cron.status_code == 422
    assert "invalid cron expression" in detail_text(bad_cron)
    assert bad_zone.status_code == 422
    assert "unknown time zone" in detail_text(bad_zone)
    assert missing.status_code == 404


async def test_pause_and_resume(client: httpx.AsyncClient) -> None:
    body = await create(client, interval_seconds=60)

    paused = await client.post(f"/schedules/{body['id']}/pause")
    resumed = await client.post(f"/schedules/{body['id']}/resume")

    assert paused.json()["state"] == "paused"
    assert paused.json()["paused"] is True
    assert resumed.json()["state"] == "active"
    assert resumed.json()["next_fire_at"] == body["next_fire_at"]


async def test_trigger_puts_one_manual_event_in_the_outbox(
    client: httpx.AsyncClient, schedules: FakeSchedules, waker: RecordingWaker
) -> None:
    body = await create(client, interval_seconds=60, payload={"title": "Now"})

    first = await client.post(f"/schedules/{body['id']}/trigger", headers={"Idempotency-Key": "k1"})
    again = await client.post(f"/schedules/{body['id']}/trigger", headers={"Idempotency-Key": "k1"})
    other = await client.post(f"/schedules/{body['id']}/trigger")

    assert first.status_code == 202
    assert first.json()["event_id"] == again.json()["event_id"]
    assert other.json()["event_id"] != first.json()["event_id"]
    assert len(schedules.outbox) == 2
    event = schedules.outbox[0]
    assert event.type == "task.recurring.triggered"
    assert event.payload["trigger"] == "manual"
    assert event.payload["title"] == "Now"
    assert len(waker.wake_ups) == 4  # the creation and each trigger


async def test_trigger_of_an_unknown_schedule_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/schedules/{uuid.uuid4()}/trigger")

    assert response.status_code == 404


async def test_missed_occurrences_are_listed(
    client: httpx.AsyncClient, schedules: FakeSchedules
) -> None:
    body = await create(client, interval_seconds=60)
    schedule_id = uuid.UUID(body["id"])
    first = datetime(2030, 1, 1, tzinfo=UTC)
    schedules.missed_runs.append(
        MissedRecord(
            schedule_id, "t1", MissedRun(MissedReason.BEYOND_GRACE, first, first, 1), first
        )
    )

    response = await client.get(f"/schedules/{schedule_id}/missed")

    assert response.json()["missed"] == [
        {
            "reason": "beyond_grace",
            "first_occurrence": "2030-01-01T00:00:00Z",
            "last_occurrence": "2030-01-01T00:00:00Z",
            "occurrences": 1,
            "recorded_at": "2030-01-01T00:00:00Z",
        }
    ]


async def test_a_completion_schedule_waits_for_a_completion(client: httpx.AsyncClient) -> None:
    body = await create(client, after_completion_days=2)

    assert body["after_completion_days"] == 2
    assert body["next_fire_at"] is None
    assert body["state"] == "waiting_for_completion"


async def test_parked_outbox_events_are_listed_with_their_reason_and_can_be_requeued(
    schedules: FakeSchedules, client: httpx.AsyncClient
) -> None:
    schedules.parked_events[7] = ParkedEvent(
        id=7,
        event_id="e-7",
        schedule_id=uuid.UUID(int=7),
        task_id="t-7",
        due_at=datetime(2026, 3, 1, tzinfo=UTC),
        attempts=20,
        reason="gave up after 20 attempts: RpcError: message too large",
        parked_at=datetime(2026, 3, 1, 0, 30, tzinfo=UTC),
    )

    listed = await client.get("/outbox/parked")
    requeued = await client.post("/outbox/parked/7/requeue")
    again = await client.post("/outbox/parked/7/requeue")

    assert listed.status_code == 200
    [parked] = listed.json()["parked"]
    assert (parked["event_id"], parked["attempts"], parked["reason"]) == (
        "e-7",
        20,
        "gave up after 20 attempts: RpcError: message too large",
    )
    assert (requeued.status_code, again.status_code) == (204, 404)
    assert schedules.parked_events == {}


async def test_an_outbox_id_beyond_a_bigint_is_refused_before_the_database(
    client: httpx.AsyncClient,
) -> None:
    # The API fuzzer found this one answered 500 (an asyncpg overflow).
    for entry_id in ("5907557811248037888000", "0", "-1"):
        response = await client.post(f"/outbox/parked/{entry_id}/requeue")
        assert response.status_code == 422, (entry_id, response.text)
