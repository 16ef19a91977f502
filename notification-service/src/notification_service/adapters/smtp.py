"""The Mailer over aiosmtplib: one SMTP conversation per email, failures sorted into
"try again later" and "never"."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib
from pydantic import SecretStr

from notification_service.emails import single_line
from notification_service.ports import (
    Email,
    MailRejectedError,
    MailTemporarilyFailedError,
)

EVENT_ID_HEADER = "X-Taskevents-Event-Id"
READINESS_TIMEOUT_SECONDS = 2.0
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
    ) -> None:
        self._host = host
        self._port = port
        self._mail_from = mail_from
        self._use_tls = use_tls
        self._start_tls = start_tls
        self._username = username
        self._password = password
        self._timeout_seconds = timeout_seconds

    def message(self, email: Email) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._mail_from
        message["To"] = email.recipient
        message["Subject"] = email.subject
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = email.message_id
        message[EVENT_ID_HEADER] = single_line(email.event_id, 200)
        message.set_content(email.text)
        message.add_alternative(email.html, subtype="html")
        return message

    async def send(self, email: Email) -> None:
        message = self.message(email)
        try:
            async with asyncio.timeout(self._timeout_seconds):
                await aiosmtplib.send(
                    message,
                    hostname=self._host,
                    port=self._port,
                    use_tls=self._use_tls,
                    start_tls=self._start_tls,
                    username=self._username,
                    password=self._password.get_secret_value() if self._password else None,
                    timeout=self._timeout_seconds,
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

    async def check(self) -> str | None:
        """Readiness: the server accepts a connection and answers NOOP."""
        client = aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._use_tls,
            start_tls=self._start_tls,
            timeout=READINESS_TIMEOUT_SECONDS,
        )
        try:
            async with asyncio.timeout(READINESS_TIMEOUT_SECONDS * 2):
                async with client:
                    await client.noop()
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            return f"SMTP server {self._host}:{self._port}: {type(error).__name__}: {error}"
        return None
