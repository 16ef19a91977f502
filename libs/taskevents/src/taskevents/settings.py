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
# The key that signs people's tokens in development (HS256 wants 32 bytes or more, RFC 7518
# §3.2). It is public, so every service refuses it outside development.
DEVELOPMENT_JWT_SECRET = "taskevents-development-only-jwt-secret-not-for-production"  # noqa: S105


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
    dapr_api_token: SecretStr | None = Field(
        default=None,
        validation_alias=_shared("DAPR_API_TOKEN"),
        description="Sent to the sidecar on every call when it requires one.",
    )

    # People's bearer tokens (taskevents.auth): the same settings in every service.
    jwt_secret: SecretStr = Field(
        default=SecretStr(DEVELOPMENT_JWT_SECRET),
        validation_alias=_shared("TASKEVENTS_JWT_SECRET"),
        description="HS256 key of people's tokens (development; production uses a JWKS).",
    )
    jwt_secret_store: str | None = Field(
        default=None,
        validation_alias=_shared("TASKEVENTS_JWT_SECRET_STORE"),
        description="Read the HS256 key from this Dapr secret store instead; tokens are "
        "answered 503 until it is loaded.",
    )
    jwt_secret_name: str = Field(
        default="JWT_SECRET",
        validation_alias=_shared("TASKEVENTS_JWT_SECRET_NAME"),
        description="The key's name in that secret store.",
    )
    jwks_url: str | None = Field(
        default=None,
        validation_alias=_shared("TASKEVENTS_JWKS_URL"),
        description="Verify RS256/ES256 tokens with the keys of this JWKS (production); "
        "then TASKEVENTS_JWT_AUDIENCE and TASKEVENTS_JWT_ISSUER are required.",
    )
    jwt_audience: str | None = Field(
        default=None, validation_alias=_shared("TASKEVENTS_JWT_AUDIENCE")
    )
    jwt_issuer: str | None = Field(default=None, validation_alias=_shared("TASKEVENTS_JWT_ISSUER"))
    operator_role: str = Field(
        default="operator",
        validation_alias=_shared("TASKEVENTS_OPERATOR_ROLE"),
        description="The role (claim `roles` or `role`) that may read every user's data and "
        "work the dead letters.",
    )
    jwt_leeway_seconds: int = Field(
        default=5,
        ge=0,
        le=300,
        validation_alias=_shared("TASKEVENTS_JWT_LEEWAY_SECONDS"),
        description="Clock skew allowed on exp.",
    )

    max_event_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        validation_alias=_shared("TASKEVENTS_MAX_EVENT_BYTES"),
        description="A delivered event larger than this is dropped (dead-lettered), unread.",
    )
    max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        validation_alias=_shared("TASKEVENTS_MAX_REQUEST_BYTES"),
        description="An API request body larger than this is answered 413.",
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
        weak = []
        if self.jwks_url is None and self.jwt_secret_store is None:
            secret = self.jwt_secret.get_secret_value()
            if is_placeholder(secret) or secret == DEVELOPMENT_JWT_SECRET:
                weak.append("TASKEVENTS_JWT_SECRET (or a JWKS: TASKEVENTS_JWKS_URL)")
        return weak

    @model_validator(mode="after")
    def _jwks_needs_audience_and_issuer(self) -> ServiceSettings:
        if self.jwks_url and not (self.jwt_audience and self.jwt_issuer):
            raise ValueError(
                "TASKEVENTS_JWKS_URL needs TASKEVENTS_JWT_AUDIENCE and TASKEVENTS_JWT_ISSUER: "
                "a token from the same identity provider for another application must not pass"
            )
        return self

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
