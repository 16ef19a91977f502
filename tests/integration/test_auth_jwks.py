"""Production tokens: RS256 and ES256 signatures checked against a real JWKS served over
HTTP on the loopback, with audience and issuer required."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from taskevents.auth import TokenRejectedError, TokenVerifier

AUDIENCE = "taskevents"
ISSUER = "https://id.taskevents.test"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks() -> dict[str, Any]:
    rsa_jwk = json.loads(RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(ECAlgorithm.to_jwk(EC_KEY.public_key()))
    return {
        "keys": [
            {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
            {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"},
        ]
    }


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    body = json.dumps(jwks()).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    finally:
        server.shutdown()


def claims(**extra: Any) -> dict[str, Any]:
    return {
        "sub": "user-7",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": datetime.now(UTC) + timedelta(minutes=5),
        **extra,
    }


def production(jwks_url: str) -> TokenVerifier:
    return TokenVerifier(
        None, operator_role="operator", jwks_url=jwks_url, audience=AUDIENCE, issuer=ISSUER
    )


async def test_rs256_and_es256_tokens_from_the_key_set_verify(jwks_url: str) -> None:
    verifier = production(jwks_url)
    rs = jwt.encode(claims(roles=["operator"]), RSA_KEY, "RS256", headers={"kid": "rsa-1"})
    es = jwt.encode(claims(), EC_KEY, "ES256", headers={"kid": "ec-1"})
    assert (await verifier.verify(rs)).operator
    assert (await verifier.verify(es)).user_id == "user-7"


async def test_keys_outside_the_set_and_wrong_claims_are_refused(jwks_url: str) -> None:
    verifier = production(jwks_url)
    cases = {
        "token signature does not verify": jwt.encode(
            claims(), STRANGER_KEY, "RS256", headers={"kid": "rsa-1"}
        ),
        "not in the key set": jwt.encode(
            claims(), STRANGER_KEY, "RS256", headers={"kid": "unknown"}
        ),
        "audience": jwt.encode(claims(aud="other"), RSA_KEY, "RS256", headers={"kid": "rsa-1"}),
        "issuer": jwt.encode(claims(iss="https://x"), RSA_KEY, "RS256", headers={"kid": "rsa-1"}),
        "algorithm 'HS256'": jwt.encode(claims(), "a-shared-secret-" * 4, "HS256"),
    }
    for reason, token in cases.items():
        with pytest.raises(TokenRejectedError, match=reason):
            await verifier.verify(token)


async def test_a_key_set_that_does_not_answer_asks_to_try_again() -> None:
    verifier = production("http://127.0.0.1:9/jwks.json")
    token = jwt.encode(claims(), RSA_KEY, "RS256", headers={"kid": "rsa-1"})
    with pytest.raises(TokenRejectedError) as caught:
        await verifier.verify(token)
    assert caught.value.retry_later
