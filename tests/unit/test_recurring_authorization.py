"""Who may call each route of recurring-task-service: a schedule belongs to its user (and
an operator may work every schedule); another user's schedule is a 403. A route without a
rule here fails the test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from recurring_task_service.app import create_app
from recurring_task_service.bootstrap import Services
from recurring_task_service.ports import ParkedEvent
from recurring_task_service.schedules import NewSchedule, rule_from_fields
from recurring_task_service.settings import Settings
from taskevents.auth import verifier_from
from tests.support.authorization import (
    TEST_JWT_SECRET,
    Access,
    RouteKey,
    Rule,
    bearer,
    check_route_table,
    serving,
)
from tests.unit.test_recurring_api import FakeSchedules, RecordingWaker, database_fine

OWNER = "ada"
STRANGER = "bob"
SCHEDULE = uuid.UUID("00000000-0000-4000-8000-000000000001")
ONE = f"/schedules/{SCHEDULE}"
PARKED_ID = 3

RULES: dict[RouteKey, Rule] = {
    ("POST", "/schedules"): Rule(
        Access.OWNER,
        "/schedules",
        success=201,
        json={"task_id": "t-new", "user_id": OWNER, "interval_seconds": 60},
    ),
    ("GET", "/schedules"): Rule(Access.OWNER, "/schedules", params={"user_id": OWNER}),
    ("GET", "/schedules/{schedule_id}"): Rule(Access.OWNER, ONE),
    ("PATCH", "/schedules/{schedule_id}"): Rule(Access.OWNER, ONE, json={"interval_seconds": 90}),
    ("POST", "/schedules/{schedule_id}/pause"): Rule(Access.OWNER, f"{ONE}/pause"),
    ("POST", "/schedules/{schedule_id}/resume"): Rule(Access.OWNER, f"{ONE}/resume"),
    ("DELETE", "/schedules/{schedule_id}"): Rule(Access.OWNER, ONE, success=204),
    ("GET", "/schedules/{schedule_id}/occurrences"): Rule(Access.OWNER, f"{ONE}/occurrences"),
    ("POST", "/schedules/{schedule_id}/trigger"): Rule(Access.OWNER, f"{ONE}/trigger", success=202),
    ("GET", "/schedules/{schedule_id}/missed"): Rule(Access.OWNER, f"{ONE}/missed"),
    ("GET", "/outbox/parked"): Rule(Access.OPERATOR, "/outbox/parked"),
    ("POST", "/outbox/parked/{entry_id}/requeue"): Rule(
        Access.OPERATOR, f"/outbox/parked/{PARKED_ID}/requeue", success=204
    ),
}


def app_of(schedules: FakeSchedules) -> FastAPI:
    @asynccontextmanager
    async def fakes(settings: Settings) -> AsyncIterator[Services]:
        yield Services(
            schedules=schedules,
            task_schedules=schedules,
            waker=RecordingWaker(),
            parked_outbox=schedules,
            database_ready=database_fine,
            sidecar_ready=database_fine,
            tokens=verifier_from(settings),
        )

    return create_app(Settings(jwt_secret=SecretStr(TEST_JWT_SECRET)), bootstrap=fakes)


def with_a_schedule_of(user_id: str, schedule_id: uuid.UUID = SCHEDULE) -> FakeSchedules:
    schedules = FakeSchedules()
    add_schedule(schedules, user_id, schedule_id)
    schedules.parked_events[PARKED_ID] = ParkedEvent(
        id=PARKED_ID,
        event_id="e-3",
        schedule_id=schedule_id,
        task_id="t-3",
        due_at=datetime(2026, 3, 1, tzinfo=UTC),
        attempts=1,
        reason="unreadable outbox row",
        parked_at=datetime(2026, 3, 1, tzinfo=UTC),
    )
    return schedules


def add_schedule(schedules: FakeSchedules, user_id: str, schedule_id: uuid.UUID) -> None:
    rule = rule_from_fields(
        cron=None, interval_seconds=60, after_completion_days=None, timezone="UTC"
    )
    new = NewSchedule(
        task_id=f"t-{schedule_id}",
        user_id=user_id,
        rule=rule,
        payload={},
        next_fire_at=datetime.now(UTC) + timedelta(minutes=1),
    )
    stored = schedules._store(new)
    del schedules.by_id[stored.id]
    schedules.by_id[schedule_id] = replace(stored, id=schedule_id)


@asynccontextmanager
async def fresh_client() -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app_of(with_a_schedule_of(OWNER))) as http:
        yield http


async def test_every_route_has_a_rule_and_answers_only_whom_it_names() -> None:
    app = app_of(FakeSchedules())
    await check_route_table(app, fresh_client, RULES, owner=OWNER, stranger=STRANGER)


async def test_a_user_lists_only_their_own_schedules_an_operator_everyones() -> None:
    schedules = with_a_schedule_of(OWNER)
    add_schedule(schedules, STRANGER, uuid.uuid4())
    app = app_of(schedules)
    async with serving(app, headers=bearer(OWNER, key=TEST_JWT_SECRET)) as http:
        own = (await http.get("/schedules")).json()["schedules"]
    operator = bearer("root", operator=True, key=TEST_JWT_SECRET)
    async with serving(app, headers=operator) as http:
        every = (await http.get("/schedules")).json()["schedules"]

    assert [s["user_id"] for s in own] == [OWNER]
    assert sorted(s["user_id"] for s in every) == [OWNER, STRANGER]


async def test_another_users_schedule_is_left_as_it_was() -> None:
    schedules = with_a_schedule_of(OWNER)
    before = schedules.by_id[SCHEDULE]
    async with serving(app_of(schedules), headers=bearer(STRANGER, key=TEST_JWT_SECRET)) as http:
        paused = await http.post(f"{ONE}/pause")
        fired = await http.post(f"{ONE}/trigger")
        deleted = await http.delete(ONE)

    assert (paused.status_code, fired.status_code, deleted.status_code) == (403, 403, 403)
    assert paused.json() == {"detail": "not allowed: changing a schedule of another user"}
    assert schedules.by_id[SCHEDULE] == before
    assert schedules.outbox == []
