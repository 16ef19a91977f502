"""The NotificationLog in the Dapr state store (`statestore`, state.postgresql v2).

One record per (event, channel), key `notification:<channel>:<event_id>`:
- the claim is a first-write-wins save of {"status": "sending", …} with a TTL of
  `claim_ttl_seconds`. The store refuses it while an unexpired record exists, and it
  treats an expired record as absent, so an abandoned claim (a crash between claim and
  send) is taken over atomically once it has expired;
- after the SMTP server accepted the mail the record becomes {"status": "sent", …}, kept
  `sent_retention_seconds` (or forever);
- a failed send deletes the claim, guarded by its etag and token, so only its holder
  releases it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from notification_service.ports import (
    Claim,
    ClaimResult,
    Notification,
    NotificationLogUnavailableError,
    PreferencesUnavailableError,
)
from notification_service.preferences import Preferences
from taskevents.logging import get_logger
from taskevents.publisher import LazyDaprClient, SidecarUnavailableError

if TYPE_CHECKING:
    from dapr.aio.clients import DaprClient

log = get_logger(__name__)

SENDING = "sending"
SENT = "sent"
TTL_METADATA = "ttlInSeconds"


def record_key(notification: Notification) -> str:
    return f"notification:{notification.channel}:{notification.event_id}"


class DaprNotificationLog:
    def __init__(
        self,
        *,
        store_name: str,
        http_port: int,
        grpc_port: int,
        claim_ttl_seconds: int,
        sent_retention_seconds: int | None,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._store_name = store_name
        self._dapr_client = LazyDaprClient(http_port=http_port, grpc_port=grpc_port)
        self._claim_ttl_seconds = claim_ttl_seconds
        self._sent_retention_seconds = sent_retention_seconds
        self._timeout_seconds = timeout_seconds

    async def claim(self, notification: Notification) -> Claim:
        from dapr.clients.grpc._state import Concurrency, StateOptions

        token = str(uuid.uuid4())
        key = record_key(notification)
        record = _record(notification, status=SENDING, token=token)
        record["claimed_at"] = _now()
        refusal = ""
        client = await self._dapr()
        # Two rounds: a claim refused for a record that is gone when read back was released
        # (or expired) in between, and is worth one more try.
        for _ in range(2):
            try:
                async with asyncio.timeout(self._timeout_seconds):
                    await client.save_state(
                        self._store_name,
                        key,
                        json.dumps(record),
                        options=StateOptions(concurrency=Concurrency.first_write),
                        state_metadata={TTL_METADATA: str(self._claim_ttl_seconds)},
                    )
            except TimeoutError as error:
                raise NotificationLogUnavailableError(f"claim timed out: {error}") from error
            except Exception as error:
                # A refused first write and an unreachable store look alike from here
                # (the SDK keeps only the message); reading the record tells them apart.
                refusal = _detail(error)
                existing = await self._read(key)
                if existing is None:
                    log.info("claim refused but no record found; trying again", error=refusal)
                    continue
                status = existing[0].get("status")
                if status == SENT:
                    return Claim(notification, ClaimResult.ALREADY_SENT, token)
                return Claim(notification, ClaimResult.HELD_ELSEWHERE, token)
            return Claim(notification, ClaimResult.CLAIMED, token)
        raise NotificationLogUnavailableError(f"could not claim {key}: {refusal}")

    async def mark_sent(self, claim: Claim, *, message_id: str) -> None:
        record = _record(claim.notification, status=SENT, token=claim.token)
        record["message_id"] = message_id
        record["sent_at"] = _now()
        metadata = (
            {TTL_METADATA: str(self._sent_retention_seconds)}
            if self._sent_retention_seconds
            else {}
        )
        client = await self._dapr()
        await self._guarded(
            client.save_state(
                self._store_name,
                record_key(claim.notification),
                json.dumps(record),
                state_metadata=metadata,
            ),
            "mark sent",
        )

    async def release(self, claim: Claim) -> None:
        key = record_key(claim.notification)
        existing = await self._read(key)
        if existing is None:
            return
        record, etag = existing
        if record.get("token") != claim.token or record.get("status") != SENDING:
            return  # taken over after our claim expired: not ours to release
        client = await self._dapr()
        try:
            await self._guarded(
                client.delete_state(self._store_name, key, etag=etag), "release claim"
            )
        except NotificationLogUnavailableError as error:
            # An etag mismatch means someone else wrote since; that record stays.
            log.info("claim not released", error=str(error))

    async def close(self) -> None:
        await self._dapr_client.close()

    async def _read(self, key: str) -> tuple[dict[str, Any], str] | None:
        client = await self._dapr()
        response = await self._guarded(client.get_state(self._store_name, key), "read")
        if not response.data:
            return None
        try:
            record = json.loads(response.data)
        except ValueError as error:
            raise NotificationLogUnavailableError(f"record {key} is not JSON") from error
        if not isinstance(record, dict):
            raise NotificationLogUnavailableError(f"record {key} is not a JSON object")
        return record, str(response.etag)

    async def _guarded(self, call: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self._timeout_seconds):
                return await call
        except TimeoutError as error:
            raise NotificationLogUnavailableError(f"{what}: timed out") from error
        except Exception as error:  # DaprInternalError, DaprGrpcError, …
            raise NotificationLogUnavailableError(f"{what}: {_detail(error)}") from error

    async def _dapr(self) -> DaprClient:
        try:
            return await self._dapr_client.get()
        except SidecarUnavailableError as error:
            raise NotificationLogUnavailableError(str(error)) from error


def _record(notification: Notification, *, status: str, token: str) -> dict[str, Any]:
    return {
        "status": status,
        "token": token,
        "event_id": notification.event_id,
        "channel": notification.channel.value,
        "event_type": notification.event_type,
        "user_id": notification.user_id,
        "task_id": notification.task_id,
        "recipient": notification.recipient,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _detail(error: Exception) -> str:
    details = getattr(error, "details", None)  # gRPC errors carry the message there
    return str(details() if callable(details) else error) or type(error).__name__


def preferences_key(user_id: str) -> str:
    return f"preferences:{user_id}"


class DaprPreferenceStore:
    """Preferences in the same state store, one record per user, key `preferences:<user>`."""

    def __init__(
        self, *, store_name: str, http_port: int, grpc_port: int, timeout_seconds: float = 5.0
    ) -> None:
        self._store_name = store_name
        self._dapr_client = LazyDaprClient(http_port=http_port, grpc_port=grpc_port)
        self._timeout_seconds = timeout_seconds

    async def get(self, user_id: str) -> Preferences | None:
        client = await self._dapr()
        response = await self._guarded(
            client.get_state(self._store_name, preferences_key(user_id)), "read preferences"
        )
        if not response.data:
            return None
        try:
            return Preferences.model_validate_json(response.data)
        except ValueError as error:
            # A record written under other rules must not silently change who gets what.
            raise PreferencesUnavailableError(
                f"stored preferences of {user_id!r} do not validate: {error}"
            ) from error

    async def put(self, user_id: str, preferences: Preferences) -> None:
        client = await self._dapr()
        await self._guarded(
            client.save_state(
                self._store_name, preferences_key(user_id), preferences.model_dump_json()
            ),
            "save preferences",
        )

    async def delete(self, user_id: str) -> bool:
        client = await self._dapr()
        key = preferences_key(user_id)
        existing = await self._guarded(client.get_state(self._store_name, key), "read")
        if not existing.data:
            return False
        await self._guarded(client.delete_state(self._store_name, key), "delete preferences")
        return True

    async def close(self) -> None:
        await self._dapr_client.close()

    async def _guarded(self, call: Any, what: str) -> Any:
        try:
            async with asyncio.timeout(self._timeout_seconds):
                return await call
        except TimeoutError as error:
            raise PreferencesUnavailableError(f"{what}: timed out") from error
        except Exception as error:
            raise PreferencesUnavailableError(f"{what}: {_detail(error)}") from error

    async def _dapr(self) -> DaprClient:
        try:
            return await self._dapr_client.get()
        except SidecarUnavailableError as error:
            raise PreferencesUnavailableError(str(error)) from error
