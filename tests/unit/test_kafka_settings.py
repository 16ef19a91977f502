"""taskevents.kafka: a direct client's settings from the environment, and the aiokafka
keyword arguments they make."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from taskevents.kafka import KafkaSettings, kafka_client_options
from tests.support.certificates import make_ca

KAFKA_VARIABLES = (
    "KAFKA_BROKERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_CA_FILE",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KAFKA_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    return make_ca(tmp_path, "unit").cert_file


def test_without_settings_a_plaintext_client_of_the_local_broker() -> None:
    assert kafka_client_options() == {
        "bootstrap_servers": "127.0.0.1:9092",
        "security_protocol": "PLAINTEXT",
    }


def test_sasl_ssl_from_the_environment(monkeypatch: pytest.MonkeyPatch, ca_file: Path) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", "kafka-0:9093,kafka-1:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "taskevents")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("KAFKA_CA_FILE", str(ca_file))

    options = kafka_client_options()

    context = options.pop("ssl_context")
    assert options == {
        "bootstrap_servers": "kafka-0:9093,kafka-1:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "taskevents",
        "sasl_plain_password": "s3cret",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "unit"),),)]


def test_a_broker_list_given_replaces_kafka_brokers_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", "elsewhere:9092")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")

    options = kafka_client_options("127.0.0.1:19092")

    assert options["bootstrap_servers"] == "127.0.0.1:19092"
    assert options["security_protocol"] == "SSL"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in options


def test_settings_given_are_used_as_they_are(ca_file: Path) -> None:
    settings = KafkaSettings(
        brokers="b:9093",
        security_protocol="SSL",
        ca_file=ca_file,
    )
    assert kafka_client_options(settings)["bootstrap_servers"] == "b:9093"


def test_sasl_ssl_without_credentials_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "taskevents")

    with pytest.raises(ValidationError, match="needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        KafkaSettings()


def test_a_ca_file_with_plaintext_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path
) -> None:
    monkeypatch.setenv("KAFKA_CA_FILE", str(ca_file))

    with pytest.raises(ValidationError, match=r"KAFKA_CA_FILE is set but .* is PLAINTEXT"):
        KafkaSettings()


def test_an_unknown_protocol_or_mechanism_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(
        ValidationError,
        match=r"KAFKA_SECURITY_PROTOCOL\n  Input should be .PLAINTEXT., .SSL. or .SASL_SSL.",
    ):
        KafkaSettings()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ValidationError, match="KAFKA_SASL_MECHANISM"):
        KafkaSettings()


def test_the_password_is_not_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "taskevents")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    assert "s3cret" not in repr(KafkaSettings())
