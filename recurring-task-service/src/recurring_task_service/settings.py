from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, PostgresDsn
from pydantic_settings import SettingsConfigDict

from taskevents.settings import ServiceSettings, is_placeholder

APP_ID = "recurring-task-service"
PACKAGE = "recurring_task_service"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="RECURRING_", extra="ignore", populate_by_name=True
    )

    port: int = Field(
        default=8002, ge=1, le=65535, validation_alias=AliasChoices("APP_PORT", "RECURRING_PORT")
    )
    database_url: PostgresDsn = Field(
        default=PostgresDsn("postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents"),
        validation_alias=AliasChoices("DATABASE_URL"),
    )
    database_pool_size: int = Field(default=5, ge=1)
    database_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    database_command_timeout_seconds: float = Field(default=10.0, gt=0)
    migrations_dir: Path | None = Field(
        default=None, description="Default: the migrations shipped with the package."
    )

    poll_seconds: float = Field(
        default=1.0, gt=0, description="How often every replica looks for due schedules."
    )
    claim_batch_size: int = Field(
        default=100, ge=1, description="Due schedules claimed (and published) per transaction."
    )
    outbox_max_attempts: int = Field(
        default=20,
        ge=1,
        description="Failed publishes of one outbox event before it is parked (with its "
        "reason, GET /outbox/parked); retried with back-off in between.",
    )
    outbox_max_backoff_seconds: float = Field(default=60.0, gt=0)
    outbox_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a replica holds the outbox events it is publishing; a crashed "
        "replica's events go out from another one after this.",
    )
    catch_up_grace_seconds: float = Field(
        default=300.0,
        ge=1,
        description="A due occurrence older than this (the service was down) is skipped, "
        "not published.",
    )

    @property
    def database_name(self) -> str:
        host = self.database_url.hosts()[0]
        return f"{host.get('host')}:{host.get('port')}{self.database_url.path or ''}"

    def placeholder_secrets(self) -> list[str]:
        weak = super().placeholder_secrets()
        if is_placeholder(self.database_url.hosts()[0].get("password")):
            weak.append("DATABASE_URL password")
        return weak
