"""websocket-service's HTTP routes: the live page and (in development only) the token
route are open by design, and every other route needs a rule here; the socket checks its
token itself (test_websocket_app.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from tests.support.authorization import (
    Access,
    RouteKey,
    Rule,
    check_route_table,
    protected_routes,
    serving,
)
from tests.unit.test_websocket_app import settings
from websocket_service.app import create_app

RULES: dict[RouteKey, Rule] = {
    ("GET", "/"): Rule(Access.PUBLIC, "/"),
    ("POST", "/dev/token"): Rule(Access.PUBLIC, "/dev/token", json={"user_id": "ada"}),
}


def app_of(environment: str = "development") -> FastAPI:
    return create_app(settings(environment=environment, jwt_secret="x" * 40))


@asynccontextmanager
async def fresh_client() -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app_of()) as http:
        yield http


async def test_every_route_has_a_rule_and_answers_only_whom_it_names() -> None:
    await check_route_table(app_of(), fresh_client, RULES, owner="ada", stranger="bob")


def test_outside_development_no_route_mints_tokens() -> None:
    assert protected_routes(app_of("production")) == {("GET", "/")}
