"""The Mailer over aiosmtplib: a few kept-open connections, one transaction per email,
failures sorted into "try again later" and "never"."""

from __future__ import annotations

import asyncio
import contextlib
import time
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, parseaddr
from typing import Any

import aiosmtplib
from pydantic import SecretStr

from notification_service.emails import single_line
from notification_service.ports import (
    Email,
    MailRejectedError,
    MailTemporarilyFailedError,
)
from taskevents.secrets import SecretsWithFallback

EVENT_ID_HEADER = "X-Taskevents-Event-Id"
READINESS_TIMEOUT_SECONDS = 2.0
REUSE_WITHOUT_CHECK_SECONDS = 5.0
PERMANENT_FAILURE_CODES = range(500, 600)


class SmtpMailer:
    def __init__(
        self,
        *,
        host: str,
        port: int,
        mail_from: str,
        use_tls: bool = False,
        start_tls: bool = False,
        username: str | None = None,
        password: SecretStr | None = None,
        timeout_seconds: float = 10.0,
        secrets: SecretsWithFallback | None = None,
        validate_certs: bool = True,
        cert_bundle: str | None = None,
        pool_size: int = 6,
    ) -> None:
        """`secrets`, when given, is asked for SMTP_USERNAME and SMTP_PASSWORD first."""
        self._host = host
        self._port = port
        self._mail_from = mail_from
        self._use_tls = use_tls
        self._start_tls = start_tls
        self._username = username
        self._password = password
        self._timeout_seconds = timeout_seconds
        self._secrets = secrets
        name, address = parseaddr(mail_from)
        self._envelope_from = address or mail_from
        self._from_header = formataddr((name, address), charset="utf-8") if address else mail_from
        self._tls_options: dict[str, Any] = {
            "validate_certs": validate_certs,
            "cert_bundle": cert_bundle,
        }
        # Connections are kept between mails (no TCP, TLS and AUTH per mail); one mail per
        # connection at a time, at most `pool_size` at once.
        self._slots = asyncio.Semaphore(max(1, pool_size))
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []

    def message(self, email: Email) -> Message:
        # The compat32 MIME classes: a quarter of the CPU of EmailMessage for the same bytes.
        message = MIMEMultipart("alternative")
        message["From"] = self._from_header
        message["To"] = _header(email.recipient)
        message["Subject"] = _header(email.subject)
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = email.message_id
        message[EVENT_ID_HEADER] = _header(single_line(email.event_id, 200))
        message.attach(MIMEText(email.text, "plain", "utf-8"))
        message.attach(MIMEText(email.html, "html", "utf-8"))
        return message

    async def credentials(self) -> tuple[str | None, str | None]:
        if self._secrets is not None:
            return (
                await self._secrets.get("SMTP_USERNAME"),
                await self._secrets.get("SMTP_PASSWORD"),
            )
        password = self._password.get_secret_value() if self._password else None
        return self._username, password

    async def send(self, email: Email) -> None:
        message = self.message(email)
        client: aiosmtplib.SMTP | None = None
        try:
            # The wait for a connection counts too: claim TTL > the whole of one send.
            async with asyncio.timeout(self._timeout_seconds), self._slots:
                client = await self._checkout()
                await client.sendmail(
                    self._envelope_from,
                    [email.recipient],
                    message.as_bytes(),
                    mail_options=["SMTPUTF8"] if not email.recipient.isascii() else None,
                )
        except aiosmtplib.SMTPRecipientsRefused as error:
            reasons = "; ".join(f"{r.code} {r.message}" for r in error.recipients)
            if all(r.code in PERMANENT_FAILURE_CODES for r in error.recipients):
                raise MailRejectedError(f"recipient refused: {reasons}") from error
            raise MailTemporarilyFailedError(f"recipient deferred: {reasons}") from error
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as error:
            if error.code in PERMANENT_FAILURE_CODES:
                raise MailRejectedError(f"{error.code} {error.message}") from error
            raise MailTemporarilyFailedError(f"{error.code} {error.message}") from error
        except aiosmtplib.SMTPResponseException as error:
            # Sender refused, authentication failed, HELO refused: our configuration or
            # the server's state, not this email: retry, and dead-letter when it lasts.
            raise MailTemporarilyFailedError(
                f"{type(error).__name__}: {error.code} {error.message}"
            ) from error
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            detail = str(error) or "no detail"
            raise MailTemporarilyFailedError(f"{type(error).__name__}: {detail}") from error
        else:
            # Only a connection whose last transaction succeeded is used again.
            self._idle.append((client, time.monotonic()))
            client = None
        finally:
            if client is not None:
                await _close(client)

    async def _checkout(self) -> aiosmtplib.SMTP:
        """A pooled connection that still answers, or a new one (connected, upgraded to TLS
        and logged in). A connection idle for a while is checked with NOOP first, so that a
        failure during the transaction itself is never answered by sending again."""
        while self._idle:
            client, idle_since = self._idle.pop()
            if not client.is_connected:
                continue
            if time.monotonic() - idle_since < REUSE_WITHOUT_CHECK_SECONDS:
                return client
            try:
                await client.noop()
            except (aiosmtplib.SMTPException, OSError):
                await _close(client)
                continue
            return client
        username, password = await self.credentials()
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._use_tls,
            start_tls=self._start_tls,
            username=username or None,
            password=password if username else None,
            timeout=self._timeout_seconds,
            **self._tls_options,
        )
        await client.connect()
        return client

    async def close(self) -> None:
        while self._idle:
            client, _ = self._idle.pop()
            await _close(client)

    async def check(self) -> str | None:
        """Readiness: the server accepts a connection and answers NOOP."""
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._use_tls,
            start_tls=self._start_tls,
            timeout=READINESS_TIMEOUT_SECONDS,
            **self._tls_options,
        )
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS * 2):
                async with client:
                    await client.noop()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            return f"SMTP server {self._host}:{self._port}: {type(error).__name__}: {error}"
        return None


async def _close(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
        if client.is_connected:
            await asyncio.wait_for(client.quit(), READINESS_TIMEOUT_SECONDS)
    client.close()


def _header(value: str) -> str:
    return value if value.isascii() else Header(value, "utf-8").encode()
