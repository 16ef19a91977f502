"""Client tokens: HS256 JWTs whose `sub` is the user id, with a required `exp`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from pydantic import SecretStr

from websocket_service.ports import Identity, TokenRejectedError

ALGORITHM = "HS256"
MAX_USER_ID_CHARS = 200


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    user_id: str
    expires_at: datetime


class JwtTokens:
    def __init__(self, secret: SecretStr, *, leeway_seconds: int = 5) -> None:
        self._secret = secret
        self._leeway_seconds = leeway_seconds

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise TokenRejectedError("missing token: pass ?token=<JWT>")
        try:
            claims = jwt.decode(
                token,
                self._secret.get_secret_value(),
                algorithms=[ALGORITHM],
                leeway=self._leeway_seconds,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRejectedError("token expired") from None
        except jwt.InvalidSignatureError:
            raise TokenRejectedError("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRejectedError(f"token lacks the {error.claim!r} claim") from None
        except jwt.InvalidAlgorithmError:
            raise TokenRejectedError(f"token algorithm is not {ALGORITHM}") from None
        except jwt.DecodeError:
            raise TokenRejectedError("token is not a well-formed JWT") from None
        except jwt.InvalidTokenError as error:
            raise TokenRejectedError(f"token rejected: {type(error).__name__}") from None
        user_id = claims.get("sub")
        if not isinstance(user_id, str) or not user_id.strip():
            raise TokenRejectedError("token 'sub' must name a user")
        if len(user_id) > MAX_USER_ID_CHARS:
            raise TokenRejectedError("token 'sub' is too long")
        return Identity(user_id=user_id)

    def issue(self, user_id: str, *, ttl_seconds: int) -> IssuedToken:
        now = datetime.now(UTC).replace(microsecond=0)
        expires_at = now + timedelta(seconds=ttl_seconds)
        token = jwt.encode(
            {"sub": user_id, "iat": now, "exp": expires_at},
            self._secret.get_secret_value(),
            algorithm=ALGORITHM,
        )
        return IssuedToken(token=token, user_id=user_id, expires_at=expires_at)
