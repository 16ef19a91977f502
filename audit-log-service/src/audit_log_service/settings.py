from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from taskevents.postgres import packaged_migrations
from taskevents.settings import ServiceSettings, is_placeholder

APP_ID = "audit-log-service"
LOCAL_DATABASE_URL = "postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUDIT_", extra="ignore", populate_by_name=True)

    port: int = Field(
        default=8003, ge=1, le=65535, validation_alias=AliasChoices("APP_PORT", "AUDIT_PORT")
    )
    database_url: SecretStr = Field(
        default=SecretStr(LOCAL_DATABASE_URL), validation_alias=AliasChoices("DATABASE_URL")
    )
    db_pool_max_size: int = Field(default=10, ge=1)
    db_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    db_acquire_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Longer than this without a connection is a RETRY."
    )
    db_command_timeout_seconds: float = Field(default=10.0, gt=0)
    ready_timeout_seconds: float = Field(default=2.0, gt=0)
    retention_months: int | None = Field(
        default=None,
        ge=1,
        description="Drop the monthly partitions older than this many months (besides the "
        "current one); default: keep everything.",
    )
    partitions_ahead_months: int = Field(
        default=3, ge=1, le=24, description="Months of partitions created ahead of need."
    )
    maintenance_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often partitions and retention are seen to."
    )
    migrate_on_start: bool = True
    migrations_dir: Path = Field(
        default_factory=lambda: packaged_migrations("audit_log_service"),
        description="Default: the migrations/ folder shipped with the service.",
    )

    @property
    def database_dsn(self) -> str:
        return self.database_url.get_secret_value()

    @property
    def database_location(self) -> str:
        """host:port/database, for logs and error messages (never the password)."""
        parts = urlsplit(self.database_dsn)
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"

    def placeholder_secrets(self) -> list[str]:
        weak = super().placeholder_secrets()
        # No password at all is fine: it may come from PGPASSFILE or the environment.
        password = urlsplit(self.database_dsn).password
        if password is not None and is_placeholder(password):
            weak.append("DATABASE_URL password")
        return weak
