from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from taskevents.settings import ServiceSettings

APP_ID = "websocket-service"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="WEBSOCKET_", extra="ignore", populate_by_name=True
    )

    port: int = Field(
        default=8004, ge=1, le=65535, validation_alias=AliasChoices("APP_PORT", "WEBSOCKET_PORT")
    )
    dead_letter_pubsub_name: str = Field(
        default="websocket-pubsub",
        description="The component this service subscribes through; its scopes let it "
        "publish the dead letters it gives reasons for.",
    )
    dev_token_ttl_seconds: int = Field(
        default=8 * 3600, ge=60, description="Lifetime of tokens from POST /dev/token."
    )

    max_connections: int = Field(
        default=20_000,
        ge=1,
        description="Open connections per process; one more is closed with 1013 (try again "
        "later). Keep it under the open-file limit.",
    )
    max_connections_per_user: int = Field(
        default=20, ge=1, description="Open connections of one user; one more gets 1008."
    )
    max_filter_items: int = Field(
        default=1000,
        ge=1,
        description="Task ids and types a connection may filter on, all messages together; "
        "going over closes it with 1008.",
    )
    max_message_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        description="The largest message a client may send; a larger one closes the "
        "connection with 1009 (message too big).",
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
