"""The settings every service shares. Each service subclasses `ServiceSettings` with an env
prefix of its own for its own fields; the shared ones below keep their usual names."""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Environment = Literal["development", "production"]

# Values that are fine on a laptop and never in production.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "dev-secret", "taskevents"})


def _shared(name: str) -> AliasChoices:
    return AliasChoices(name)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    environment: Environment = Field(
        default="development", validation_alias=_shared("TASKEVENTS_ENV")
    )
    log_level: str = Field(default="INFO", validation_alias=_shared("LOG_LEVEL"))
    log_json: bool | None = Field(
        default=None,
        validation_alias=_shared("LOG_JSON"),
        description="JSON logs; default: on outside development.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on: <PREFIX>HOST, else APP_HOST (the image sets it).",
    )
    port: int = Field(default=8000, ge=1, le=65535)

    dapr_http_port: int = Field(default=3500, validation_alias=_shared("DAPR_HTTP_PORT"))
    dapr_grpc_port: int = Field(default=50001, validation_alias=_shared("DAPR_GRPC_PORT"))
    app_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=_shared("APP_API_TOKEN"),
        description="When set, calls from the sidecar must carry it as `dapr-api-token`.",
    )
    pubsub_name: str = Field(default="kafka-pubsub", validation_alias=_shared("PUBSUB_NAME"))
    topic: str = Field(default="task-events", validation_alias=_shared("TOPIC"))
    dead_letter_topic: str = Field(
        default="task-events-dlq", validation_alias=_shared("DEAD_LETTER_TOPIC")
    )

    @model_validator(mode="before")
    @classmethod
    def _generic_app_host(cls, data: Any) -> Any:
        # One image recipe serves every service: it sets APP_HOST, not each service's own
        # name for it; the service's own (AUDIT_HOST, …) still wins.
        generic = os.environ.get("APP_HOST")
        if isinstance(data, dict) and "host" not in data and generic:
            return {**data, "host": generic}
        return data

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else self.environment != "development"

    def placeholder_secrets(self) -> list[str]:
        """Names of secret settings still holding a development placeholder; subclasses
        extend it with their own secrets."""
        return []

    @model_validator(mode="after")
    def _refuse_placeholders_outside_development(self) -> ServiceSettings:
        if self.environment != "development":
            weak = self.placeholder_secrets()
            if weak:
                raise ValueError(
                    f"refusing to start in {self.environment} with placeholder secrets: "
                    + ", ".join(weak)
                    + " (set them, or TASKEVENTS_ENV=development on a laptop)"
                )
        return self


def is_placeholder(secret: SecretStr | str | None) -> bool:
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return value is None or value.strip().lower() in PLACEHOLDER_SECRETS
