"""Settings of a direct Kafka client (aiokafka: the test harness, the benchmarks, the ops
console), read from the environment, and the client keyword arguments they make. The
services never talk to Kafka themselves (daprd does), so aiokafka is not imported here.

    KAFKA_BROKERS            host:port[,host:port…]            (default 127.0.0.1:9092)
    KAFKA_SECURITY_PROTOCOL  PLAINTEXT | SSL | SASL_SSL         (default PLAINTEXT)
    KAFKA_SASL_MECHANISM     SCRAM-SHA-512 | SCRAM-SHA-256 | PLAIN (default SCRAM-SHA-512)
    KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD                    (SASL_SSL only, required)
    KAFKA_CA_FILE            PEM bundle the broker's certificate is checked against
                             (SSL, SASL_SSL; default: the system's trust store)
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class KafkaSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    brokers: str = Field(default="127.0.0.1:9092", validation_alias=_env("KAFKA_BROKERS"))
    security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", validation_alias=_env("KAFKA_SECURITY_PROTOCOL")
    )
    sasl_mechanism: SaslMechanism = Field(
        default="SCRAM-SHA-512", validation_alias=_env("KAFKA_SASL_MECHANISM")
    )
    sasl_username: str | None = Field(default=None, validation_alias=_env("KAFKA_SASL_USERNAME"))
    sasl_password: SecretStr | None = Field(
        default=None, validation_alias=_env("KAFKA_SASL_PASSWORD")
    )
    ca_file: Path | None = Field(default=None, validation_alias=_env("KAFKA_CA_FILE"))

    @model_validator(mode="after")
    def _complete(self) -> KafkaSettings:
        if self.security_protocol == "SASL_SSL" and not (
            self.sasl_username and self.sasl_password and self.sasl_password.get_secret_value()
        ):
            raise ValueError(
                "KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        if self.ca_file is not None and self.security_protocol == "PLAINTEXT":
            raise ValueError(
                "KAFKA_CA_FILE is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT: "
                "set it to SSL or SASL_SSL, or unset KAFKA_CA_FILE"
            )
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """Verifies the broker's certificate and host name (never turned off here)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        return ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.brokers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol != "PLAINTEXT":
            options["ssl_context"] = self.ssl_context()
        if self.security_protocol == "SASL_SSL":
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        return options


def kafka_client_options(brokers: str | KafkaSettings | None = None) -> dict[str, Any]:
    """Client keyword arguments: for these settings, or from the environment — with these
    brokers instead of KAFKA_BROKERS when a broker list is given."""
    if isinstance(brokers, KafkaSettings):
        return brokers.client_options()
    settings = KafkaSettings() if brokers is None else KafkaSettings(brokers=brokers)
    return settings.client_options()
