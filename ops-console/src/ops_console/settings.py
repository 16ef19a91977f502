from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field
from pydantic_settings import SettingsConfigDict

from taskevents.settings import ServiceSettings

APP_ID = "ops-console"


class SidecarTarget(BaseModel):
    """One app's sidecar, as the console reaches it."""

    app_id: str
    dapr_http_url: str = Field(description="The sidecar's HTTP API, e.g. http://127.0.0.1:3501.")
    metrics_url: str | None = Field(
        default=None, description="daprd's Prometheus endpoint, e.g. http://127.0.0.1:9191/."
    )
    app_url: str | None = Field(
        default=None, description="The app itself (its /health and /ready), if it has one."
    )
    consumer_group: str | None = Field(
        default=None,
        description="The Kafka consumer group its sidecar consumes with (default: the app-id).",
    )

    @property
    def group(self) -> str:
        return self.consumer_group or self.app_id


def _local(app_id: str, http: int, metrics: int, app: int | None) -> SidecarTarget:
    return SidecarTarget(
        app_id=app_id,
        dapr_http_url=f"http://127.0.0.1:{http}",
        metrics_url=f"http://127.0.0.1:{metrics}/",
        app_url=f"http://127.0.0.1:{app}" if app else None,
    )


# The sidecars of `make run`, as dapr.yaml places them (a unit test keeps the two equal).
LOCAL_TARGETS = [
    _local("notification-service", 3501, 9191, 8001),
    _local("recurring-task-service", 3502, 9192, 8002),
    _local("audit-log-service", 3503, 9193, 8003),
    _local("websocket-service", 3504, 9194, 8004),
    _local("ops-console", 3505, 9196, 8005),
    _local("taskevents-cli", 3500, 9195, None),
]


def _state_dir() -> Path:
    if state := os.environ.get("TASKEVENTS_STATE"):
        return Path(state)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "taskevents"


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CONSOLE_", extra="ignore", populate_by_name=True)

    port: int = Field(
        default=8005, ge=1, le=65535, validation_alias=AliasChoices("APP_PORT", "CONSOLE_PORT")
    )
    targets: list[SidecarTarget] = Field(
        default_factory=lambda: list(LOCAL_TARGETS),
        description="The sidecars to watch, as JSON; default: those of dapr.yaml.",
    )
    run_file: Path | None = Field(
        default=None,
        description="Read the sidecars from this Dapr run file instead (dapr.yaml).",
    )
    kafka_brokers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices(
            "CONSOLE_KAFKA_BROKERS", "TASKEVENTS_KAFKA_BROKERS", "KAFKA_BROKERS"
        ),
    )
    consumer_groups: list[str] | None = Field(
        default=None,
        description="The consumer groups to watch, as JSON; default: every group named after "
        "a watched app-id (the app-id itself, or `<app-id>-…` for websocket replicas).",
    )
    sample_seconds: float = Field(
        default=5.0, gt=0, description="How often delivery counters and lag are sampled."
    )
    request_timeout_seconds: float = Field(default=3.0, gt=0)
    audit_app_id: str = "audit-log-service"
    notification_app_id: str = "notification-service"
    recurring_app_id: str = "recurring-task-service"
    token_app_id: str = Field(
        default="websocket-service",
        description="The app whose POST /dev/token the development login uses.",
    )
    log_dir: Path = Field(
        default_factory=lambda: _state_dir() / "logs",
        description="Where the local runner writes the apps' logs ($TASKEVENTS_STATE/logs).",
    )
    proc_root: Path = Field(default=Path("/proc"), description="Where processes are listed.")
    traces_url: str = Field(
        default="http://127.0.0.1:16686/api/traces",
        description="Where an event's trace is: <traces_url>/<trace id> (Jaeger's query API of "
        "`make run`; its UI is not built in).",
    )
