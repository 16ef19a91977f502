"""People's bearer tokens in tests, and the route-table check every service's API passes.

`bearer(user_id)` is the header a test sends as that user (an HS256 token signed with the
development key, which every service accepts in development). The route table: a test
lists, for every route of an app, who may call it (`Rule`); `protected_routes(app)` walks
the app so that a route without a rule fails the test, and `check_rule` asserts the cases:
no token and a token signed with another key → 401 with `WWW-Authenticate: Bearer`, another
user → 403 where the rule is per user, a plain user → 403 where it is for operators, and
the right caller (and an operator) → the route's success status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from pydantic import SecretStr
from starlette.types import Receive, Scope, Send

from taskevents.auth import TokenVerifier
from taskevents.settings import DEVELOPMENT_JWT_SECRET

OPERATOR_ROLE = "operator"
# The route-table tests run their apps with this key: the development key is then "another
# key", and a token signed with it must be refused.
TEST_JWT_SECRET = "route-table-tests-only-key-of-at-least-32-bytes"
TOKEN_TTL_SECONDS = 3600
PROBES = frozenset({"/health", "/ready", "/metrics"})


def token(user_id: str, *, operator: bool = False, key: str = DEVELOPMENT_JWT_SECRET) -> str:
    minting = TokenVerifier(SecretStr(key), operator_role=OPERATOR_ROLE)
    roles = [OPERATOR_ROLE] if operator else []
    return minting.issue(user_id, ttl_seconds=TOKEN_TTL_SECONDS, roles=roles).token


def bearer(
    user_id: str, *, operator: bool = False, key: str = DEVELOPMENT_JWT_SECRET
) -> dict[str, str]:
    """The `Authorization` header of a request made as `user_id`."""
    return {"Authorization": f"Bearer {token(user_id, operator=operator, key=key)}"}


@asynccontextmanager
async def serving(app: FastAPI, **client: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with its lifespan running (httpx's ASGITransport runs none): each
    request gets a copy of the lifespan's state, as a server hands it out."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state or {})}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", **client) as http:
            yield http


# --- the route table ---------------------------------------------------------------------


class Access(Enum):
    OWNER = "the user the data belongs to, or an operator"
    OPERATOR = "an operator only"
    PUBLIC = "anyone, without a token (a page, the development token route)"


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call a route, and a call that succeeds for them. The data the fakes hold
    belongs to `owner`; the call is made as the owner, another user and an operator."""

    access: Access
    path: str  # the concrete path to call (route parameters filled in)
    success: int = 200
    params: Mapping[str, Any] = field(default_factory=dict)
    json: Any = None


RouteKey = tuple[str, str]  # (method, path template), as the app declares it
ClientFactory = Callable[[], AbstractAsyncContextManager[httpx.AsyncClient]]


def _is_subscription(route: APIRoute | RouteContext) -> bool:
    # The sidecar's routes carry taskevents.web.app_token's guard (the app token, not people's).
    return any(
        getattr(d.call, "__qualname__", "").startswith("app_token_guard.")
        for d in route.dependant.dependencies
    )


def protected_routes(app: FastAPI) -> set[RouteKey]:
    """Every HTTP route of the app but the probes, the sidecar's subscription routes and
    the OpenAPI pages (which are not APIRoutes): each needs a rule."""
    found: set[RouteKey] = set()
    for route in iter_route_contexts(app.routes):
        if not isinstance(route.original_route, APIRoute):
            continue
        if route.path in PROBES or _is_subscription(route):
            continue
        found |= {(method, str(route.path)) for method in route.methods or () if method != "HEAD"}
    return found


async def check_route_table(
    app: FastAPI,
    clients: ClientFactory,
    table: Mapping[RouteKey, Rule],
    *,
    owner: str,
    stranger: str,
) -> None:
    """The whole check of a service: every route has a rule, the OpenAPI declares the
    bearer scheme on each route that needs a token, and each route answers as its rule
    says (`check_rule`)."""
    assert_table_covers(app, table)
    assert_bearer_in_openapi(app, {k for k, r in table.items() if r.access is not Access.PUBLIC})
    for key, rule in table.items():
        await check_rule(clients, key, rule, owner=owner, stranger=stranger)


def assert_table_covers(app: FastAPI, table: Mapping[RouteKey, Rule]) -> None:
    routes = protected_routes(app)
    missing = sorted(routes - set(table))
    stale = sorted(set(table) - routes)
    assert not missing, f"routes without an authorization rule: {missing}"
    assert not stale, f"rules for routes the app does not have: {stale}"


def assert_bearer_in_openapi(app: FastAPI, routes: set[RouteKey]) -> None:
    schema = app.openapi()
    if routes:
        assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path in routes:
        operation = schema["paths"][path][method.lower()]
        assert {"HTTPBearer": []} in operation.get("security", []), (method, path)


async def _call(
    http: httpx.AsyncClient, method: str, rule: Rule, headers: Mapping[str, str]
) -> httpx.Response:
    return await http.request(
        method, rule.path, params=dict(rule.params), json=rule.json, headers=dict(headers)
    )


async def check_rule(
    clients: ClientFactory, key: RouteKey, rule: Rule, *, owner: str, stranger: str
) -> None:
    """The cases of one route, each against fresh fakes (a success may change them)."""
    method = key[0]
    if rule.access is Access.PUBLIC:
        async with clients() as http:
            response = await _call(http, method, rule, {})
        assert response.status_code == rule.success, (key, response.text)
        return
    refusals: dict[str, Mapping[str, str]] = {
        "no token": {},
        "another key": bearer(owner, operator=True, key=DEVELOPMENT_JWT_SECRET),
        "not a JWT": {"Authorization": "Bearer not-a-jwt"},
    }
    for case, headers in refusals.items():
        async with clients() as http:
            response = await _call(http, method, rule, headers)
        assert response.status_code == 401, (key, case, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer"), (key, case)

    forbidden_as = stranger if rule.access is Access.OWNER else owner
    async with clients() as http:
        response = await _call(http, method, rule, bearer(forbidden_as, key=TEST_JWT_SECRET))
    assert response.status_code == 403, (key, forbidden_as, response.text)
    assert response.json()["detail"].startswith("not allowed: "), (key, response.text)

    allowed = {"operator": bearer(f"operator-{owner}", operator=True, key=TEST_JWT_SECRET)}
    if rule.access is Access.OWNER:
        allowed["owner"] = bearer(owner, key=TEST_JWT_SECRET)
    for case, headers in allowed.items():
        async with clients() as http:
            response = await _call(http, method, rule, headers)
        assert response.status_code == rule.success, (key, case, response.text)
