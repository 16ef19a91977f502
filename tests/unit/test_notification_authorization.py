"""Who may call each route of notification-service: a user's preferences and
notifications are theirs and an operator's. A route without a rule here fails the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from notification_service.app import create_app
from notification_service.preferences import Preferences
from notification_service.settings import Settings
from tests.support.authorization import (
    TEST_JWT_SECRET,
    Access,
    RouteKey,
    Rule,
    check_route_table,
    serving,
)
from tests.unit.test_notification_app import bootstrap_of
from tests.unit.test_notification_handlers import FakeMailer, FakeNotificationLog, World

OWNER = "user-7"
STRANGER = "user-8"

RULES: dict[RouteKey, Rule] = {
    ("GET", "/preferences/{user_id}"): Rule(Access.OWNER, f"/preferences/{OWNER}"),
    ("PUT", "/preferences/{user_id}"): Rule(
        Access.OWNER, f"/preferences/{OWNER}", json={"email": "ada@example.com"}
    ),
    ("DELETE", "/preferences/{user_id}"): Rule(Access.OWNER, f"/preferences/{OWNER}", success=204),
    ("GET", "/notifications"): Rule(Access.OWNER, "/notifications", params={"user_id": OWNER}),
}


def app_of(world: World) -> FastAPI:
    settings = Settings(jwt_secret=SecretStr(TEST_JWT_SECRET))
    return create_app(settings, bootstrap=bootstrap_of(world))


@asynccontextmanager
async def fresh_client() -> AsyncIterator[httpx.AsyncClient]:
    world = World(FakeMailer(), FakeNotificationLog())
    world.preferences.stored[OWNER] = Preferences(email="owner@example.com")
    async with serving(app_of(world)) as http:
        yield http


async def test_every_route_has_a_rule_and_answers_only_whom_it_names() -> None:
    app = app_of(World(FakeMailer(), FakeNotificationLog()))
    await check_route_table(app, fresh_client, RULES, owner=OWNER, stranger=STRANGER)
