"""SMS providers behind the SmsSender port: `none` (the channel is off), `log`
(development), `webhook` (POST JSON to a URL) and `twilio` (the Twilio Messages REST API).
Each sorts failures into "try again later" (timeouts, 429, 5xx, credentials) and "never"
(the number or message refused)."""

from __future__ import annotations

from typing import Any

import httpx

from notification_service.ports import (
    SMS_OFF_REASON,
    DeliveryRejectedError,
    DeliveryTemporarilyFailedError,
    Sms,
)
from taskevents.logging import get_logger
from taskevents.secrets import SecretsWithFallback

log = get_logger(__name__)

TEMPORARY_HTTP = frozenset({401, 403, 404, 408, 409, 425, 429})
IDEMPOTENCY_HEADER = "Idempotency-Key"


class NoSmsSender:
    """The SMS channel is off: the handlers record an SMS as skipped before it gets here; a
    digest summarised while a provider was on is refused."""

    name = "none"

    async def send(self, sms: Sms) -> None:
        raise DeliveryRejectedError(SMS_OFF_REASON)


class LogSmsSender:
    """Development: the SMS goes to the log, nowhere else."""

    name = "log"

    async def send(self, sms: Sms) -> None:
        log.info("SMS (log provider)", to=sms.recipient, body=sms.body, message_id=sms.message_id)


class WebhookSmsSender:
    """POSTs {"to", "body", "message_id", "event_id"} as JSON; 2xx means accepted."""

    name = "webhook"

    def __init__(self, *, url: str, timeout_seconds: float = 10.0, token: str | None = None):
        self._url = url
        self._timeout = timeout_seconds
        self._token = token

    async def send(self, sms: Sms) -> None:
        headers = {IDEMPOTENCY_HEADER: sms.message_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        body = {
            "to": sms.recipient,
            "body": sms.body,
            "message_id": sms.message_id,
            "event_id": sms.event_id,
        }
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                response = await http.post(self._url, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise DeliveryTemporarilyFailedError(
                f"webhook {self._url}: {type(error).__name__}: {error}"
            ) from error
        _raise_for(response, f"webhook {self._url}")


class TwilioSmsSender:
    """POST {base}/2010-04-01/Accounts/{sid}/Messages.json, form-encoded To/From/Body, basic
    auth sid:token. Twilio answers 201 with the message; 4xx bodies carry a `code`."""

    name = "twilio"

    def __init__(
        self,
        *,
        base_url: str,
        account_sid: str,
        from_number: str | None,
        messaging_service_sid: str | None,
        secrets: SecretsWithFallback,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._account_sid = account_sid
        self._from = from_number
        self._messaging_service_sid = messaging_service_sid
        self._secrets = secrets
        self._timeout = timeout_seconds

    @property
    def url(self) -> str:
        return f"{self._base_url}/2010-04-01/Accounts/{self._account_sid}/Messages.json"

    async def send(self, sms: Sms) -> None:
        token = await self._secrets.get("TWILIO_AUTH_TOKEN")
        if not token:
            raise DeliveryTemporarilyFailedError(
                "twilio: no auth token (secret TWILIO_AUTH_TOKEN or NOTIFY_TWILIO_AUTH_TOKEN)"
            )
        form = {"To": sms.recipient, "Body": sms.body}
        if self._messaging_service_sid:
            form["MessagingServiceSid"] = self._messaging_service_sid
        if self._from:
            form["From"] = self._from
        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                response = await http.post(
                    self.url, data=form, auth=(self._account_sid, token),
                    headers={"I-Twilio-Idempotency-Token": sms.message_id},
                )  # fmt: skip
        except httpx.HTTPError as error:
            raise DeliveryTemporarilyFailedError(
                f"twilio: {type(error).__name__}: {error}"
            ) from error
        _raise_for(response, "twilio")
        log.info("twilio accepted the SMS", sid=_json(response).get("sid"))


def _raise_for(response: httpx.Response, who: str) -> None:
    if response.is_success:
        return
    body = _json(response)
    detail = (
        " ".join(str(part) for part in (body.get("code"), body.get("message")) if part is not None)
        or response.text[:200]
    )
    reason = f"{who}: HTTP {response.status_code} {detail}".strip()
    if response.status_code >= 500 or response.status_code in TEMPORARY_HTTP:
        raise DeliveryTemporarilyFailedError(reason)
    raise DeliveryRejectedError(reason)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
