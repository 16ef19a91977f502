from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from taskevents.events import EventType
from taskevents.settings import ServiceSettings, is_placeholder

APP_ID = "notification-service"
DEFAULT_EVENT_TYPES = frozenset(
    {EventType.TASK_CREATED, EventType.TASK_COMPLETED, EventType.TASK_RECURRING_TRIGGERED}
)


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore", populate_by_name=True)

    port: int = Field(
        default=8001, ge=1, le=65535, validation_alias=AliasChoices("APP_PORT", "NOTIFY_PORT")
    )
    event_types: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(t.value for t in DEFAULT_EVENT_TYPES),
        description="Event types that notify, comma-separated in NOTIFY_EVENT_TYPES.",
    )

    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_starttls: bool = Field(default=False, description="Upgrade a plain connection.")
    smtp_tls: bool = Field(default=False, description="Implicit TLS from the first byte.")
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Upper bound of one whole SMTP conversation."
    )
    mail_from: str = "taskevents <noreply@taskevents.local>"
    link_base_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8004")

    state_store_name: str = "statestore"
    state_timeout_seconds: float = Field(default=5.0, gt=0)
    claim_ttl_seconds: int = Field(
        default=20,
        ge=1,
        description="A 'sending' claim older than this is taken to be from a crashed delivery "
        "and may be taken over (the mail may then go out twice, never zero times).",
    )
    claim_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a delivery that finds another one sending waits for it before "
        "asking Dapr to retry.",
    )
    sent_retention_days: int = Field(
        default=30, ge=0, description="How long 'sent' records are kept; 0 keeps them forever."
    )

    @field_validator("event_types", mode="before")
    @classmethod
    def _split_types(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.smtp_tls and self.smtp_starttls:
            raise ValueError("NOTIFY_SMTP_TLS and NOTIFY_SMTP_STARTTLS exclude each other")
        # A live sender must finish (send, then mark sent) before its claim may be taken over.
        if self.claim_ttl_seconds <= self.smtp_timeout_seconds + self.state_timeout_seconds:
            raise ValueError(
                "NOTIFY_CLAIM_TTL_SECONDS must exceed NOTIFY_SMTP_TIMEOUT_SECONDS + "
                "NOTIFY_STATE_TIMEOUT_SECONDS"
            )
        return self

    @property
    def sent_retention_seconds(self) -> int | None:
        return self.sent_retention_days * 86_400 if self.sent_retention_days else None

    def placeholder_secrets(self) -> list[str]:
        weak = super().placeholder_secrets()
        if self.smtp_username and is_placeholder(self.smtp_password):
            weak.append("smtp_password")
        return weak
