from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from taskevents.settings import ServiceSettings, is_placeholder

APP_ID = "websocket-service"
# Long enough for HS256 (RFC 7518 §3.2), and refused in production.
DEVELOPMENT_JWT_SECRET = "taskevents-development-only-jwt-secret-not-for-production"  # noqa: S105


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="WEBSOCKET_", extra="ignore", populate_by_name=True
    )

    port: int = Field(
        default=8004, ge=1, le=65535, validation_alias=AliasChoices("APP_PORT", "WEBSOCKET_PORT")
    )
    jwt_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_JWT_SECRET), description="HS256 key of the client tokens."
    )
    jwt_leeway_seconds: int = Field(default=5, ge=0, description="Clock skew allowed on exp.")
    dev_token_ttl_seconds: int = Field(
        default=8 * 3600, ge=60, description="Lifetime of tokens from POST /dev/token."
    )

    max_queue_frames: int = Field(
        default=1000,
        ge=1,
        description="Frames waiting for one client; a client that falls further behind is "
        "closed with 1013 (try again later).",
    )
    recent_event_ids: int = Field(
        default=256,
        ge=1,
        description="Event ids remembered per connection, so a redelivered event is not "
        "sent twice to the same client.",
    )
    close_grace_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How long a connection being closed may take to send its close frame "
        "before the server drops it.",
    )
    shutdown_grace_seconds: float = Field(
        default=3.0, ge=0, description="How long shutdown waits for clients to be closed."
    )
    ws_ping_interval_seconds: float = Field(default=20.0, gt=0)
    ws_ping_timeout_seconds: float = Field(default=20.0, gt=0)
    ws_compression: bool = Field(default=False, description="permessage-deflate.")

    def placeholder_secrets(self) -> list[str]:
        weak = super().placeholder_secrets()
        secret = self.jwt_secret.get_secret_value()
        if is_placeholder(secret) or secret == DEVELOPMENT_JWT_SECRET:
            weak.append("jwt_secret")
        return weak
