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
    jwt_secret_store: str | None = Field(
        default=None,
        description="Read the HS256 key from this Dapr secret store (e.g. `envstore`) "
        "instead of WEBSOCKET_JWT_SECRET; tokens are refused (1013) until it is loaded.",
    )
    jwt_secret_name: str = Field(
        default="WEBSOCKET_JWT_SECRET", description="The key's name in that secret store."
    )
    jwks_url: str | None = Field(
        default=None, description="Also accept RS256 tokens signed by a key of this JWKS."
    )
    jwt_audience: str | None = Field(default=None, description="Required `aud`, if set.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss`, if set.")
    admin_role: str = Field(
        default="admin",
        description="A token with this role (claim `roles` or `role`) may "
        "watch every user (`?watch=all`).",
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
    heartbeat_seconds: float = Field(
        default=25.0,
        ge=0,
        description="A `heartbeat` frame this often, so browsers (which cannot see "
        "WebSocket pings) know the stream is alive; 0 turns it off.",
    )
    coalesce_milliseconds: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Frames for one client within this window go out as one `batch` frame; "
        "0 sends every frame on its own.",
    )
    dapr_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DAPR_API_TOKEN"),
        description="Sent to the sidecar (secrets, service invocation) when it requires one.",
    )
    audit_app_id: str = Field(default="audit-log-service", description="Resume source.")
    resume_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a resume may wait for the audit log."
    )
    resume_max_events: int = Field(
        default=1000, ge=1, description="At most this many missed events are replayed."
    )
    replay_buffer_events: int = Field(
        default=5000,
        ge=0,
        description="The latest events kept in memory, for a resume when the audit log "
        "has not stored them yet.",
    )

    def placeholder_secrets(self) -> list[str]:
        weak = super().placeholder_secrets()
        secret = self.jwt_secret.get_secret_value()
        if is_placeholder(secret) or secret == DEVELOPMENT_JWT_SECRET:
            weak.append("jwt_secret")
        return weak
