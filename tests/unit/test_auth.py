"""The one token verifier: what it accepts, and every forgery it refuses."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from taskevents.auth import Caller, Identity, Operator, TokenRejectedError, TokenVerifier
from taskevents.web import RunningServices, lifespan_state

KEY = "unit-test-shared-key-that-is-long-enough-for-hs256"
OTHER_KEY = "another-key-entirely-that-is-also-long-enough-for-hs256"


def verifier(**options: Any) -> TokenVerifier:
    return TokenVerifier(SecretStr(KEY), operator_role="operator", **options)


def token(claims: Mapping[str, Any], key: str = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(dict(claims), key, algorithm=algorithm)


def valid_claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "user-7", "exp": datetime.now(UTC) + timedelta(minutes=5), **extra}


async def test_a_valid_token_names_its_user_and_roles() -> None:
    identity = await verifier().verify(token(valid_claims(roles=["operator", "x"])))
    assert identity == Identity("user-7", frozenset({"operator", "x"}), operator=True)
    plain = await verifier().verify(token(valid_claims(role="viewer")))
    assert (plain.user_id, plain.operator, plain.roles) == ("user-7", False, frozenset({"viewer"}))


def unsigned(claims: Mapping[str, Any]) -> str:
    def part(value: Mapping[str, Any]) -> str:
        raw = json.dumps(value, default=str).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def tampered(original: str) -> str:
    header, _payload, signature = original.split(".")
    claims = {"sub": "someone-else", "exp": 4102444800}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


FORGERIES = {
    "alg none": (unsigned({"sub": "user-7", "exp": 4102444800}), "algorithm 'none'"),
    "wrong key": (token(valid_claims(), key=OTHER_KEY), "signature"),
    "expired": (
        token({"sub": "user-7", "exp": datetime.now(UTC) - timedelta(minutes=5)}),
        "expired",
    ),
    "no exp": (token({"sub": "user-7"}), "'exp'"),
    "no sub": (token({"exp": datetime.now(UTC) + timedelta(minutes=5)}), "'sub'"),
    "empty sub": (token(valid_claims(sub=" ")), "'sub' must name a user"),
    "tampered payload": (tampered(token(valid_claims())), "signature"),
    "not a JWT": ("not-a-token", "well-formed"),
    "HS512": (token(valid_claims(), algorithm="HS512"), "algorithm 'HS512'"),
}


@pytest.mark.parametrize("name", FORGERIES)
async def test_forged_tokens_are_refused(name: str) -> None:
    forged, reason = FORGERIES[name]
    with pytest.raises(TokenRejectedError, match=reason):
        await verifier().verify(forged)


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    strict = verifier(audience="taskevents", issuer="https://id.example")
    good = token(valid_claims(aud="taskevents", iss="https://id.example"))
    assert (await strict.verify(good)).user_id == "user-7"
    for claims, reason in (
        (valid_claims(aud="other", iss="https://id.example"), "audience"),
        (valid_claims(aud="taskevents", iss="https://evil.example"), "issuer"),
        (valid_claims(iss="https://id.example"), "'aud'"),
        (valid_claims(aud="taskevents"), "'iss'"),
    ):
        with pytest.raises(TokenRejectedError, match=reason):
            await strict.verify(token(claims))


def test_a_jwks_without_audience_and_issuer_is_refused() -> None:
    with pytest.raises(ValueError, match="audience and an issuer"):
        verifier(jwks_url="http://127.0.0.1:1/jwks.json")


async def test_with_a_jwks_and_no_shared_key_hs256_is_refused() -> None:
    with_jwks = TokenVerifier(
        None,
        operator_role="operator",
        jwks_url="http://127.0.0.1:1/jwks.json",
        audience="a",
        issuer="i",
    )
    with pytest.raises(TokenRejectedError, match="algorithm 'HS256' is not accepted"):
        await with_jwks.verify(token(valid_claims(aud="a", iss="i")))


def test_beside_a_jwks_the_development_key_signs_nothing_in_production() -> None:
    from taskevents.auth import verifier_from
    from taskevents.settings import ServiceSettings

    jwks: dict[str, Any] = {
        "jwks_url": "https://id.example/jwks",
        "jwt_audience": "a",
        "jwt_issuer": "i",
    }
    assert not verifier_from(ServiceSettings(environment="production", **jwks)).has_shared_key
    assert verifier_from(ServiceSettings(environment="development", **jwks)).has_shared_key
    real = ServiceSettings(environment="production", jwt_secret=SecretStr("k" * 40), **jwks)
    assert verifier_from(real).has_shared_key


async def test_a_key_not_loaded_yet_asks_to_try_again() -> None:
    waiting = TokenVerifier(None, operator_role="operator")
    with pytest.raises(TokenRejectedError) as caught:
        await waiting.verify(token(valid_claims()))
    assert caught.value.retry_later
    waiting.use_shared_key(SecretStr(KEY))
    assert (await waiting.verify(token(valid_claims()))).user_id == "user-7"


async def test_issued_development_tokens_verify() -> None:
    issued = verifier().issue("user-9", ttl_seconds=60, roles=["operator"])
    identity = await verifier().verify(issued.token)
    assert (identity.user_id, identity.operator) == ("user-9", True)


class Demo(RunningServices):
    def token_verifier(self) -> TokenVerifier:
        return verifier()


def demo_client() -> TestClient:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield lifespan_state(Demo())

    app = FastAPI(lifespan=lifespan)

    @app.get("/mine")
    async def mine(caller: Caller) -> dict[str, str]:
        return {"user": caller.user_id}

    @app.get("/everyone")
    async def everyone(caller: Operator) -> dict[str, str]:
        return {"operator": caller.user_id}

    return TestClient(app)


def test_routes_answer_401_with_the_bearer_challenge_and_403_for_the_wrong_role() -> None:
    with demo_client() as client:
        missing = client.get("/mine")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        forged = client.get("/mine", headers={"Authorization": f"Bearer {unsigned({})}"})
        assert forged.status_code == 401
        assert "not accepted" in forged.json()["detail"]
        user = {"Authorization": f"Bearer {token(valid_claims())}"}
        assert client.get("/mine", headers=user).json() == {"user": "user-7"}
        refused = client.get("/everyone", headers=user)
        assert refused.status_code == 403
        assert "operator" in refused.json()["detail"]
        operator = {"Authorization": f"Bearer {token(valid_claims(roles=['operator']))}"}
        assert client.get("/everyone", headers=operator).json() == {"operator": "user-7"}


def test_openapi_declares_the_bearer_scheme_so_docs_can_authorize() -> None:
    with demo_client() as client:
        spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A JWT whose `sub` is the user id.",
    }
    assert spec["paths"]["/mine"]["get"]["security"] == [{"HTTPBearer": []}]


def test_every_service_refuses_the_development_key_outside_development() -> None:
    from pydantic import ValidationError

    from taskevents.settings import ServiceSettings

    with pytest.raises(ValidationError, match="TASKEVENTS_JWT_SECRET"):
        ServiceSettings(environment="production")
    assert ServiceSettings(environment="production", jwt_secret=SecretStr("s" * 40)).jwt_secret
    # With a JWKS the shared key is not used, but audience and issuer are required.
    with pytest.raises(ValidationError, match="AUDIENCE"):
        ServiceSettings(environment="production", jwks_url="https://id.example/jwks")
    production = ServiceSettings(
        environment="production",
        jwks_url="https://id.example/jwks",
        jwt_audience="taskevents",
        jwt_issuer="https://id.example",
    )
    assert production.placeholder_secrets() == []
