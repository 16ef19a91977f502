"""Who is calling: one bearer-token verifier for every service's API and the WebSocket.

A token is a JWT whose `sub` names the user and whose `exp` is required. Development signs
with one HS256 key (from the environment or a Dapr secret store); production verifies
RS256/ES256 signatures with the keys of a JWKS, and then requires `aud` and `iss` too. The
algorithm is never taken from the token: HS256 is only accepted with the shared key, the
asymmetric ones only with a JWKS key. Roles come from the `roles` (list) or `role` claim;
the operator role (name configurable) may read every user's data and work the dead letters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.requests import HTTPConnection

from taskevents.background import in_background
from taskevents.logging import get_logger
from taskevents.retry import SIDECAR_ANSWERS, RetryPolicy
from taskevents.secrets import DaprSecrets, SecretUnavailableError
from taskevents.settings import DEVELOPMENT_JWT_SECRET, ServiceSettings, is_placeholder

log = get_logger(__name__)

SHARED_KEY_ALGORITHM = "HS256"
JWKS_ALGORITHMS = ("RS256", "ES256")
MAX_USER_ID_CHARS = 200
DEFAULT_LEEWAY_SECONDS = 5


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    operator: bool = False

    def may_act_for(self, user_id: str) -> bool:
        return self.operator or self.user_id == user_id


class TokenRejectedError(Exception):
    def __init__(self, reason: str, *, retry_later: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_later = retry_later  # the server cannot check tokens yet


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    user_id: str
    expires_at: datetime


class TokenVerifier:
    def __init__(
        self,
        shared_key: SecretStr | None,
        *,
        operator_role: str,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
    ) -> None:
        if jwks_url and not (audience and issuer):
            raise ValueError("a JWKS needs an audience and an issuer to check tokens against")
        self._shared_key = shared_key
        self._operator_role = operator_role
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=5) if jwks_url else None
        self._audience = audience
        self._issuer = issuer
        self._leeway_seconds = leeway_seconds

    @property
    def operator_role(self) -> str:
        return self._operator_role

    @property
    def has_shared_key(self) -> bool:
        return self._shared_key is not None

    @property
    def ready(self) -> bool:
        """Whether a token can be checked now (a key from a secret store may come later)."""
        return self._shared_key is not None or self._jwks is not None

    def use_shared_key(self, key: SecretStr) -> None:
        self._shared_key = key

    async def verify(self, token: str | None) -> Identity:
        if not token:
            raise TokenRejectedError("missing bearer token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenRejectedError("token is not a well-formed JWT") from None
        algorithm = header.get("alg")
        key: Any
        if algorithm in JWKS_ALGORITHMS and self._jwks is not None:
            key = await self._jwks_key(token)
        elif algorithm == SHARED_KEY_ALGORITHM and (self._jwks is None or self._shared_key):
            if self._shared_key is None:
                raise TokenRejectedError(
                    "the server has not loaded its token key yet; try again", retry_later=True
                )
            key = self._shared_key.get_secret_value()
        else:
            allowed = (*(JWKS_ALGORITHMS if self._jwks else ()), SHARED_KEY_ALGORITHM)
            if self._jwks is not None and self._shared_key is None:
                allowed = JWKS_ALGORITHMS
            raise TokenRejectedError(
                f"token algorithm {str(algorithm)[:20]!r} is not accepted ({', '.join(allowed)})"
            )
        claims = self._decode(token, key, str(algorithm))
        roles = _roles(claims)
        return Identity(
            user_id=_user_id(claims),
            roles=frozenset(roles),
            operator=self._operator_role in roles,
        )

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
        required = ["exp", "sub"]
        required += ["aud"] if self._audience else []
        required += ["iss"] if self._issuer else []
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
        """A development token signed with the shared key (never used with a JWKS)."""
        if self._shared_key is None:
            raise RuntimeError("the token key is not loaded yet")
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + timedelta(seconds=ttl_seconds)
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": expires_at}
        if self._audience:
            claims["aud"] = self._audience
        if self._issuer:
            claims["iss"] = self._issuer
        if roles:
            claims["roles"] = list(roles)
        token = jwt.encode(
            claims, self._shared_key.get_secret_value(), algorithm=SHARED_KEY_ALGORITHM
        )
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


def verifier_from(settings: ServiceSettings) -> TokenVerifier:
    """The verifier the settings describe; without a shared key yet when it comes from a
    secret store (see `load_shared_key`). Beside a JWKS the shared key signs tokens too only
    in development or when it is a real key (never the public development one)."""
    shared: SecretStr | None = settings.jwt_secret
    if settings.jwt_secret_store is not None:
        shared = None
    elif settings.jwks_url and settings.environment != "development":
        secret = settings.jwt_secret.get_secret_value()
        if is_placeholder(secret) or secret == DEVELOPMENT_JWT_SECRET:
            shared = None
    return TokenVerifier(
        shared,
        operator_role=settings.operator_role,
        jwks_url=settings.jwks_url,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        leeway_seconds=settings.jwt_leeway_seconds,
    )


async def load_shared_key(
    verifier: TokenVerifier, secrets: DaprSecrets, name: str, *, policy: RetryPolicy
) -> None:
    """Read the HS256 key from the secret store, trying again per `policy` until the sidecar
    hands it out; until then tokens are answered "try again later"."""
    key = await policy.call(SecretUnavailableError, lambda: secrets.read(name))
    verifier.use_shared_key(SecretStr(key))
    log.info("token key loaded", store=secrets.store, name=name)


def start_verifier(settings: ServiceSettings, stack: AsyncExitStack) -> TokenVerifier:
    """A service's verifier, for its bootstrap: `verifier_from(settings)`, and when the key
    comes from a Dapr secret store, its loading in the background (the sidecar answers only
    once the app listens; until then tokens are answered "try again later")."""
    verifier = verifier_from(settings)
    if settings.jwt_secret_store is not None:
        api_token = settings.dapr_api_token.get_secret_value() if settings.dapr_api_token else None
        store = DaprSecrets(
            store=settings.jwt_secret_store, http_port=settings.dapr_http_port, api_token=api_token
        )
        loading = load_shared_key(verifier, store, settings.jwt_secret_name, policy=SIDECAR_ANSWERS)
        in_background(stack, loading, name="token-key")
    return verifier


# FastAPI ---------------------------------------------------------------------------------

# Declares the scheme in OpenAPI, so /docs has "Authorize"; we answer the 401 ourselves.
bearer_scheme = HTTPBearer(auto_error=False, description="A JWT whose `sub` is the user id.")
VERIFIER_KEY = "token_verifier"


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=f"not authenticated: {reason}",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def forbidden(what: str) -> HTTPException:
    return HTTPException(status_code=403, detail=f"not allowed: {what}")


def verifier_of(connection: HTTPConnection) -> TokenVerifier:
    """The verifier the lifespan put into the state (see taskevents.web.lifespan_state)."""
    found = getattr(connection.state, VERIFIER_KEY, None)
    if not isinstance(found, TokenVerifier):
        raise RuntimeError("no token verifier: the service's lifespan has not started")
    return found


async def authenticated(
    connection: HTTPConnection,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Identity:
    if credentials is None:
        raise unauthorized("send Authorization: Bearer <JWT>")
    try:
        return await verifier_of(connection).verify(credentials.credentials)
    except TokenRejectedError as error:
        if error.retry_later:
            raise HTTPException(503, error.reason, headers={"Retry-After": "2"}) from None
        raise unauthorized(error.reason) from None


async def operator_only(caller: Annotated[Identity, Depends(authenticated)]) -> Identity:
    if not caller.operator:
        raise forbidden("only an operator may do this")
    return caller


# What a route takes: `caller: Caller` (any authenticated user) or `caller: Operator`.
Caller = Annotated[Identity, Depends(authenticated)]
Operator = Annotated[Identity, Depends(operator_only)]


def ensure_may_act_for(caller: Identity, user_id: str, what: str) -> None:
    """403 unless the caller is that user or an operator."""
    if not caller.may_act_for(user_id):
        raise forbidden(f"{what} of another user")


def user_filter_for(caller: Identity, user_id: str | None, what: str) -> str | None:
    """The user filter of a listing the caller asked for with `user_id`: an operator's as
    asked (None: everyone), a user's always their own — naming another user is a 403."""
    if user_id is not None:
        ensure_may_act_for(caller, user_id, what)
        return user_id
    return None if caller.operator else caller.user_id
