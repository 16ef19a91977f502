"""The audit log's `GET /audit/events` through the sidecar (Dapr service invocation): a
user's events in the order the audit log committed them, from the anchor event on
(`after_event_id`, then `after_seq` page by page). Each request carries the connecting
client's own bearer token, so the audit log answers with what that client may read, never
more."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from taskevents.events import TaskEvent
from websocket_service.ports import AuditHistory, AuditUnavailableError

MAX_PAGE_ITEMS = 500  # the audit API's limit per request


class DaprAuditLog:
    def __init__(
        self,
        *,
        dapr_http_port: int,
        app_id: str = "audit-log-service",
        timeout_seconds: float = 5.0,
        dapr_api_token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: a fake audit API
    ) -> None:
        self._url = f"http://127.0.0.1:{dapr_http_port}/v1.0/invoke/{app_id}/method/audit/events"
        headers = {"dapr-api-token": dapr_api_token} if dapr_api_token else {}
        self._http = httpx.AsyncClient(
            timeout=timeout_seconds, headers=headers, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def history_after(
        self, user_id: str | None, anchor_event_id: str, *, max_events: int, bearer_token: str
    ) -> AuditHistory:
        events: list[TaskEvent] = []
        position: dict[str, str | int] = {"after_event_id": anchor_event_id}
        while True:
            limit = min(MAX_PAGE_ITEMS, max_events + 1 - len(events))
            page = await self._page(user_id, limit, position, bearer_token)
            if page is None:  # 404: the audit log has no such event (of this user)
                return AuditHistory(found_anchor=False)
            items = page["items"]
            events.extend(e for e in map(_event, items) if e is not None)
            if len(events) > max_events:
                return AuditHistory(events[:max_events], found_anchor=True, truncated=True)
            after_seq = page.get("next_after_seq")
            if len(items) < limit or not isinstance(after_seq, int):
                return AuditHistory(events, found_anchor=True)
            position = {"after_seq": after_seq}

    async def _page(
        self,
        user_id: str | None,
        limit: int,
        position: dict[str, str | int],
        bearer_token: str,
    ) -> dict[str, Any] | None:
        params: dict[str, str | int] = {"limit": limit, **position}
        if user_id is not None:
            params["user_id"] = user_id
        try:
            response = await self._http.get(
                self._url, params=params, headers={"Authorization": f"Bearer {bearer_token}"}
            )
        except httpx.HTTPError as error:
            raise AuditUnavailableError(f"{type(error).__name__}: {error}") from None
        if response.status_code == 404 and "not in the audit log" in response.text:
            return None
        if not response.is_success:
            raise AuditUnavailableError(
                f"GET /audit/events answered {response.status_code}: {response.text[:200]}"
            )
        try:
            body = response.json()
        except ValueError:
            raise AuditUnavailableError("GET /audit/events answered with non-JSON") from None
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise AuditUnavailableError("GET /audit/events answered without an `items` list")
        return body


def _event(item: Any) -> TaskEvent | None:
    # Stored rows carry more (seq, received_at, Kafka coordinates); the event model ignores
    # them.
    try:
        return TaskEvent.model_validate(item)
    except ValidationError:
        return None
