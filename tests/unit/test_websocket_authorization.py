"""websocket-service's HTTP routes: the live page and (in development only) the token
route are open by design, and every other route needs a rule here; the socket checks its
token itself (test_websocket_app.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI

from tests.support.authorization import (
    Access,
    RouteKey,
    Rule,
    assert_table_covers,
    check_rule,
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


def test_every_route_has_a_rule() -> None:
    assert_table_covers(app_of(), RULES)


def test_outside_development_no_route_mints_tokens() -> None:
    assert protected_routes(app_of("production")) == {("GET", "/")}


@pytest.mark.parametrize("key", list(RULES), ids=" ".join)
async def test_each_route_answers_only_whom_its_rule_names(key: RouteKey) -> None:
    await check_rule(fresh_client, key, RULES[key], owner="ada", stranger="bob")
