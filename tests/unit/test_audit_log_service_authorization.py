"""Who may call each route of the audit log: a user reads their own events, an operator
everyone's and the dead letters. A route without a rule here fails the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from audit_log_service.app import create_app
from audit_log_service.settings import Settings
from tests.support.authorization import (
    TEST_JWT_SECRET,
    Access,
    RouteKey,
    Rule,
    bearer,
    check_route_table,
    serving,
)
from tests.unit.test_audit_log_service_api import (
    EVENT,
    FakeAudit,
    bootstrap_of,
    cloud_event,
    stored_dead_letter,
)

OWNER = "user-1"  # the user of every event the fake holds
STRANGER = "user-2"

RULES: dict[RouteKey, Rule] = {
    ("GET", "/audit/events"): Rule(Access.OWNER, "/audit/events", params={"user_id": OWNER}),
    ("GET", "/audit/tasks/{task_id}/history"): Rule(Access.OWNER, "/audit/tasks/t-1/history"),
    ("GET", "/audit/stats"): Rule(Access.OWNER, "/audit/stats", params={"user_id": OWNER}),
    ("GET", "/audit/dead-letters"): Rule(Access.OPERATOR, "/audit/dead-letters"),
    ("GET", "/audit/dead-letters/{letter_id}"): Rule(Access.OPERATOR, "/audit/dead-letters/1"),
    ("POST", "/audit/dead-letters/replay"): Rule(
        Access.OPERATOR, "/audit/dead-letters/replay", json={}
    ),
    ("POST", "/audit/dead-letters/{letter_id}/replay"): Rule(
        Access.OPERATOR, "/audit/dead-letters/1/replay"
    ),
    ("DELETE", "/audit/dead-letters/{letter_id}"): Rule(Access.OPERATOR, "/audit/dead-letters/1"),
}


def app_of(audit: FakeAudit) -> FastAPI:
    settings = Settings(jwt_secret=SecretStr(TEST_JWT_SECRET))
    return create_app(settings, bootstrap=bootstrap_of(audit))


def with_a_dead_letter() -> FakeAudit:
    audit = FakeAudit()
    audit.letters[1] = stored_dead_letter(1, cloud_event(EVENT))
    return audit


@asynccontextmanager
async def fresh_client() -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app_of(with_a_dead_letter())) as http:
        yield http


async def test_every_route_has_a_rule_and_answers_only_whom_it_names() -> None:
    await check_route_table(
        app_of(FakeAudit()), fresh_client, RULES, owner=OWNER, stranger=STRANGER
    )


async def test_a_user_without_a_filter_gets_only_their_own_events_and_counts() -> None:
    audit = FakeAudit()
    async with serving(app_of(audit), headers=bearer("ada", key=TEST_JWT_SECRET)) as http:
        events = await http.get("/audit/events", params={"type": "task.created"})
        stats = await http.get("/audit/stats")

    assert events.status_code == stats.status_code == 200
    assert audit.queries[0].user_id == "ada"
    assert audit.stats_of == ["ada"]


async def test_an_operator_without_a_filter_reads_everyone() -> None:
    audit = FakeAudit()
    headers = bearer("root", operator=True, key=TEST_JWT_SECRET)
    async with serving(app_of(audit), headers=headers) as http:
        await http.get("/audit/events")
        await http.get("/audit/stats")

    assert audit.queries[0].user_id is None
    assert audit.stats_of == [None]


async def test_a_history_with_another_users_event_in_it_is_refused() -> None:
    async with serving(app_of(FakeAudit()), headers=bearer(STRANGER, key=TEST_JWT_SECRET)) as http:
        response = await http.get("/audit/tasks/t-1/history")

    assert response.status_code == 403
    assert response.json() == {"detail": "not allowed: reading the history of another user's task"}


async def test_the_operator_recorded_is_the_subject_of_the_token() -> None:
    audit = with_a_dead_letter()
    audit.letters[2] = stored_dead_letter(2, cloud_event(EVENT))
    headers = {
        **bearer("grace", operator=True, key=TEST_JWT_SECRET),
        "X-Operator": "mallory",  # no longer read: who acts is who the token names
    }
    async with serving(app_of(audit), headers=headers) as http:
        replayed = await http.post("/audit/dead-letters/1/replay")
        discarded = await http.delete("/audit/dead-letters/2")

    assert replayed.json()["replayed_by"] == "grace"
    assert discarded.json()["discarded_by"] == "grace"
