"""Client tokens: JWTs whose `sub` is the user id, with a required `exp` — HS256 with the
service's key (from the environment or a Dapr secret store), or RS256 with a key from a
JWKS (PyJWKClient)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from pydantic import SecretStr

from websocket_service.ports import Identity, TokenRejectedError

ALGORITHM = "HS256"
JWKS_ALGORITHM = "RS256"
MAX_USER_ID_CHARS = 200


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    user_id: str
    expires_at: datetime


class JwtTokens:
    def __init__(
        self,
        secret: SecretStr | None,
        *,
        leeway_seconds: int = 5,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        admin_role: str = "admin",
    ) -> None:
        self._secret = secret
        self._leeway_seconds = leeway_seconds
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=5) if jwks_url else None
        self._audience = audience
        self._issuer = issuer
        self._admin_role = admin_role

    @property
    def has_secret(self) -> bool:
        return self._secret is not None

    def use_secret(self, secret: SecretStr) -> None:
        self._secret = secret

    async def verify(self, token: str | None) -> Identity:
        if not token:
            raise TokenRejectedError(
                "missing token: pass ?token=<JWT> or the subprotocols taskevents.v1, bearer.<JWT>"
            )
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRejectedError("token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm == JWKS_ALGORITHM and self._jwks is not None:
            key = await self._jwks_key(token)
        elif algorithm == ALGORITHM:
            if self._secret is None:
                raise TokenRejectedError(
                    "the server has not loaded its token key yet; try again", retry_later=True
                )
            key = self._secret.get_secret_value()
        else:
            allowed = [ALGORITHM] + ([JWKS_ALGORITHM] if self._jwks is not None else [])
            raise TokenRejectedError(
                f"token algorithm {str(algorithm)[:20]!r} is not accepted ({', '.join(allowed)})"
            )
        claims = self._decode(token, key, algorithm)
        return Identity(user_id=_user_id(claims), admin=self._admin_role in _roles(claims))

    async def _jwks_key(self, token: str) -> Any:
        assert self._jwks is not None
        try:
            # PyJWKClient fetches with urllib (blocking): off the event loop.
            signing_key = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
        except jwt.PyJWKClientConnectionError:
            raise TokenRejectedError(
                "the key set (JWKS) does not answer; try again", retry_later=True
            ) from None
        except jwt.PyJWKClientError as error:
            raise TokenRejectedError(f"token key not in the key set: {error}"[:120]) from None
        except jwt.DecodeError:
            raise TokenRejectedError("token is not a well-formed JWT") from None
        return signing_key.key

    def _decode(self, token: str, key: Any, algorithm: str) -> dict[str, Any]:
        required = (
            ["exp", "sub"] + (["aud"] if self._audience else []) + (["iss"] if self._issuer else [])
        )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                leeway=self._leeway_seconds,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejectedError("token expired") from None
        except jwt.InvalidSignatureError:
            raise TokenRejectedError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejectedError(f"token lacks the {error.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejectedError(f"token algorithm is not {algorithm}") from None
        except jwt.InvalidAudienceError:
            raise TokenRejectedError("token audience is not accepted") from None
        except jwt.InvalidIssuerError:
            raise TokenRejectedError("token issuer is not accepted") from None
        except jwt.DecodeError:
            raise TokenRejectedError("token is not a well-formed JWT") from None
        except jwt.InvalidTokenError as error:
            raise TokenRejectedError(f"token rejected: {type(error).__name__}") from None
        return claims

    def issue(self, user_id: str, *, ttl_seconds: int, roles: Iterable[str] = ()) -> IssuedToken:
        if self._secret is None:
            raise RuntimeError("the token key is not loaded yet")
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + timedelta(seconds=ttl_seconds)
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": expires_at}
        if roles:
            claims["roles"] = list(roles)
        token = jwt.encode(claims, self._secret.get_secret_value(), algorithm=ALGORITHM)
        return IssuedToken(token=token, user_id=user_id, expires_at=expires_at)


def _user_id(claims: dict[str, Any]) -> str:
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not user_id.strip():
        raise TokenRejectedError("token 'sub' must name a user")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise TokenRejectedError("token 'sub' is too long")
    return user_id


def _roles(claims: dict[str, Any]) -> set[str]:
    roles = claims.get("roles", [])
    single = claims.get("role")
    found = {r for r in roles if isinstance(r, str)} if isinstance(roles, list) else set()
    if isinstance(single, str):
        found.add(single)
    return found
