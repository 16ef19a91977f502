"""The bearer token the benchmarks call the services' APIs with: an operator's, signed with
the development key (the benchmarks run the services in development)."""

from __future__ import annotations

from pydantic import SecretStr

from taskevents.auth import TokenVerifier
from taskevents.settings import DEVELOPMENT_JWT_SECRET

OPERATOR_ROLE = "operator"


def operator_headers(ttl_seconds: int = 4 * 3600) -> dict[str, str]:
    minting = TokenVerifier(SecretStr(DEVELOPMENT_JWT_SECRET), operator_role=OPERATOR_ROLE)
    issued = minting.issue("bench", ttl_seconds=ttl_seconds, roles=[OPERATOR_ROLE])
    return {"Authorization": f"Bearer {issued.token}"}
