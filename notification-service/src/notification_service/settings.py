from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, AnyHttpUrl, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from taskevents.events import EventType
from taskevents.settings import ServiceSettings, is_placeholder

APP_ID = "notification-service"
LOCAL_DATABASE_URL = "postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents"
SmsProvider = Literal["none", "log", "webhook", "twilio"]
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
    smtp_validate_certs: bool = Field(
        default=True, description="Check the server's certificate (STARTTLS or TLS)."
    )
    smtp_cert_bundle: str | None = Field(
        default=None, description="CA bundle (PEM) to trust instead of the system's."
    )
    smtp_pool_size: int = Field(
        default=6,
        ge=1,
        le=64,
        description="SMTP connections kept open and used at once (one per partition).",
    )
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
        default=30,
        ge=0,
        description="How long 'sent' claims and ledger rows are kept; 0 keeps them forever.",
    )

    database_url: SecretStr = Field(
        default=SecretStr(LOCAL_DATABASE_URL),
        validation_alias=AliasChoices("NOTIFY_DATABASE_URL", "DATABASE_URL"),
        description="Postgres for the ledger (history, deferred notifications, rate limit).",
    )
    ledger_namespace: str = Field(
        default=APP_ID,
        min_length=1,
        description="Keeps the ledger rows of deployments sharing one database apart.",
    )
    dead_letter_with_reason: bool = Field(
        default=True,
        description="On a permanent failure, publish the dead letter ourselves with the "
        "reason in a Kafka header (then SUCCESS) instead of answering DROP.",
    )
    secret_store: str = Field(
        default="envstore",
        description="Dapr secret store asked for SMTP_USERNAME, SMTP_PASSWORD and "
        "TWILIO_AUTH_TOKEN before the environment; empty: the environment only.",
    )

    default_channels: Annotated[frozenset[Literal["email", "sms"]], NoDecode] = Field(
        default=frozenset({"email"}),
        description="Channels for users without preferences, comma-separated.",
    )
    urgent_priorities: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset({"urgent"}),
        description="payload.priority values that are sent even during quiet hours.",
    )
    rate_limit_count: int = Field(
        default=10,
        ge=0,
        description="Messages per user and channel per window; more are summarised in one "
        "digest. 0 switches the limit off.",
    )
    rate_limit_window_seconds: float = Field(default=600.0, gt=0)

    deferred_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the background task looks for due messages."
    )
    deferred_batch: int = Field(default=20, ge=1, le=500)
    deferred_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A taken due message is retaken after this if its taker died.",
    )
    deferred_retry_seconds: float = Field(default=30.0, gt=0)
    deferred_max_attempts: int = Field(default=10, ge=1)
    retry_budget_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long a notification whose channel is down (SMTP/SMS unreachable, 4xx, "
        "timeout) is kept in the ledger and retried in the background before it is "
        "dead-lettered with the reason; 0 leaves the retries to Dapr (seconds).",
    )
    retry_first_seconds: float = Field(
        default=5.0, gt=0, description="The first wait of those retries; it doubles."
    )
    retry_max_interval_seconds: float = Field(
        default=30.0, gt=0, description="The longest wait between two of those retries."
    )
    max_event_age_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="An event on the topic longer than this when it arrives (a new consumer "
        "group reading the topic's history) is recorded as too old and not sent; 0 sends "
        "every event.",
    )

    sms_provider: SmsProvider | None = Field(
        default=None,
        description="none (the SMS channel is off), log (development: SMS written to the "
        "log), webhook or twilio; default: log in development, none elsewhere. log is "
        "refused outside development.",
    )
    sms_timeout_seconds: float = Field(default=10.0, gt=0)
    sms_include_link: bool = True
    sms_webhook_url: AnyHttpUrl | None = None
    sms_webhook_token: SecretStr | None = None
    twilio_base_url: AnyHttpUrl = AnyHttpUrl("https://api.twilio.com")
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_messaging_service_sid: str | None = None

    @field_validator("event_types", "default_channels", "urgent_priorities", mode="before")
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
        send_timeout = max(self.smtp_timeout_seconds, self.sms_timeout_seconds)
        if self.claim_ttl_seconds <= send_timeout + self.state_timeout_seconds:
            raise ValueError(
                "NOTIFY_CLAIM_TTL_SECONDS must exceed NOTIFY_SMTP_TIMEOUT_SECONDS (and "
                "NOTIFY_SMS_TIMEOUT_SECONDS) + NOTIFY_STATE_TIMEOUT_SECONDS"
            )
        if self.sms_provider == "webhook" and self.sms_webhook_url is None:
            raise ValueError("NOTIFY_SMS_PROVIDER=webhook needs NOTIFY_SMS_WEBHOOK_URL")
        if self.sms_provider == "twilio" and not (
            self.twilio_account_sid and (self.twilio_from or self.twilio_messaging_service_sid)
        ):
            raise ValueError(
                "NOTIFY_SMS_PROVIDER=twilio needs NOTIFY_TWILIO_ACCOUNT_SID and "
                "NOTIFY_TWILIO_FROM (or NOTIFY_TWILIO_MESSAGING_SERVICE_SID)"
            )
        return self

    @model_validator(mode="after")
    def _sms_provider_for_the_environment(self) -> Settings:
        if self.sms_provider is None:
            self.sms_provider = "log" if self.environment == "development" else "none"
        elif self.sms_provider == "log" and self.environment != "development":
            # The log provider sends nothing and writes phone numbers and task titles to the
            # log: a message a user chose to get by SMS would be lost without a trace.
            raise ValueError(
                f"refusing to start in {self.environment} with NOTIFY_SMS_PROVIDER=log: it "
                "writes SMS to the log instead of sending them; choose webhook or twilio, or "
                "none to switch the SMS channel off (or TASKEVENTS_ENV=development on a laptop)"
            )
        return self

    @property
    def sms_channel_on(self) -> bool:
        return self.sms_provider != "none"

    @property
    def database_location(self) -> str:
        """host:port/database, for logs (never the password)."""
        parts = urlsplit(self.database_url.get_secret_value())
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"

    @property
    def sent_retention_seconds(self) -> int | None:
        return self.sent_retention_days * 86_400 if self.sent_retention_days else None

    def placeholder_secrets(self) -> list[str]:
        weak = super().placeholder_secrets()
        if self.smtp_username and not self.secret_store and is_placeholder(self.smtp_password):
            weak.append("smtp_password")
        password = urlsplit(self.database_url.get_secret_value()).password
        if password is not None and is_placeholder(password):
            weak.append("DATABASE_URL password")
        return weak
