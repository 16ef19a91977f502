"""The SMTP adapter against real SMTP servers (aiosmtpd) that speak STARTTLS or implicit TLS
with a certificate of their own and require authentication: the mail arrives with both
parts; a wrong password or an untrusted certificate is a failure to retry, never a loss."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from notification_service.adapters.smtp import SmtpMailer
from notification_service.emails import EmailComposer
from notification_service.ports import MailTemporarilyFailedError
from taskevents.events import TaskEvent
from taskevents.secrets import SecretsWithFallback
from tests.support.stack import free_port

pytestmark = pytest.mark.integration

USER, PASSWORD = "mailer", "s3cret-from-the-store"
COMPOSER = EmailComposer(link_base_url="http://127.0.0.1:8004", mail_from="t <noreply@t.test>")


@dataclass
class Inbox:
    messages: list[tuple[list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(  # noqa: N802 - aiosmtpd finds its hooks by name
        self, server: Any, session: Session, envelope: Envelope
    ) -> str:
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 OK"


def authenticate(
    server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USER.encode(),
        PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("smtp-tls"), "localhost")


@pytest.fixture(scope="module")
def other_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("smtp-tls-other"), "other")


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def starttls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), tls_context=server_context(certificate),
        require_starttls=True, authenticator=authenticate, auth_require_tls=True,
    )  # fmt: skip
    controller.start()
    yield controller.port, inbox
    controller.stop()


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=free_port(), ssl_context=server_context(certificate),
        authenticator=authenticate, auth_require_tls=False,
    )  # fmt: skip
    controller.start()
    yield controller.port, inbox
    controller.stop()


def mailer(
    port: int,
    cert: Path,
    *,
    password: str = PASSWORD,
    start_tls: bool = False,
    use_tls: bool = False,
) -> SmtpMailer:
    # The credentials come through the secret source (here: its environment fallback).
    secrets = SecretsWithFallback(None, {"SMTP_USERNAME": USER, "SMTP_PASSWORD": password})
    return SmtpMailer(
        host="127.0.0.1", port=port, mail_from="t <noreply@t.test>", secrets=secrets,
        cert_bundle=str(cert), timeout_seconds=10, start_tls=start_tls, use_tls=use_tls,
    )  # fmt: skip


def email() -> Any:
    event = TaskEvent.create(
        "task.created", task_id="t-tls", user_id="u", payload={"title": "Over TLS"}
    )
    return COMPOSER.compose(event, "ada@example.com")


async def test_starttls_with_authentication(
    starttls_server: tuple[int, Inbox], certificate: tuple[Path, Path]
) -> None:
    port, inbox = starttls_server

    await mailer(port, certificate[0], start_tls=True).send(email())

    [(recipients, raw)] = inbox.messages
    assert recipients == ["ada@example.com"]
    assert b"Subject: New task: Over TLS" in raw
    assert b"text/plain" in raw
    assert b"text/html" in raw
    assert await mailer(port, certificate[0], start_tls=True).check() is None


async def test_implicit_tls_with_authentication(
    tls_server: tuple[int, Inbox], certificate: tuple[Path, Path]
) -> None:
    port, inbox = tls_server

    await mailer(port, certificate[0], use_tls=True).send(email())

    assert len(inbox.messages) == 1


async def test_wrong_password_and_untrusted_certificate_are_retried(
    starttls_server: tuple[int, Inbox],
    certificate: tuple[Path, Path],
    other_certificate: tuple[Path, Path],
) -> None:
    port, inbox = starttls_server
    with pytest.raises(MailTemporarilyFailedError, match="535"):
        await mailer(port, certificate[0], password="wrong", start_tls=True).send(email())

    with pytest.raises(MailTemporarilyFailedError, match=r"(?i)certificate"):
        await mailer(port, other_certificate[0], start_tls=True).send(email())
    assert inbox.messages == []
