"""The audit log's `GET /audit/events` through the sidecar (Dapr service invocation):
a user's events, newest first, page by page until the anchor event. Each request carries
the connecting client's own bearer token, so the audit log answers with what that client
may read, never more."""

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
    ) -> None:
        self._url = f"http://127.0.0.1:{dapr_http_port}/v1.0/invoke/{app_id}/method/audit/events"
        headers = {"dapr-api-token": dapr_api_token} if dapr_api_token else {}
        self._http = httpx.AsyncClient(timeout=timeout_seconds, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def history_until(
        self, user_id: str | None, anchor_event_id: str, *, max_events: int, bearer_token: str
    ) -> AuditHistory:
        events: list[TaskEvent] = []
        ids: set[str] = set()
        cursor: str | None = None
        while True:
            limit = min(MAX_PAGE_ITEMS, max_events + 1)
            page = await self._page(user_id, limit, cursor, bearer_token)
            for item in page.get("items", []):
                event = _event(item)
                if event is None or event.event_id in ids:
                    continue
                ids.add(event.event_id)
                events.append(event)
                if event.event_id == anchor_event_id:
                    return AuditHistory(events, found_anchor=True, ids=frozenset(ids))
                if len(events) > max_events:
                    return AuditHistory(events[:max_events], truncated=True, ids=frozenset(ids))
            # Cursor pagination, where the audit API offers it; without it one page is all.
            cursor = page.get("next_cursor")
            if not cursor or not page.get("items"):
                full = len(page.get("items", [])) >= limit
                return AuditHistory(events, truncated=full, ids=frozenset(ids))

    async def _page(
        self, user_id: str | None, limit: int, cursor: str | None, bearer_token: str
    ) -> dict[str, Any]:
        params: dict[str, str | int] = {"limit": limit}
        if user_id is not None:
            params["user_id"] = user_id
        if cursor:
            params["cursor"] = cursor
        try:
            response = await self._http.get(
                self._url, params=params, headers={"Authorization": f"Bearer {bearer_token}"}
            )
        except httpx.HTTPError as error:
            raise AuditUnavailableError(f"{type(error).__name__}: {error}") from None
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
    # Stored rows carry more (received_at, Kafka coordinates); the event model ignores them.
    try:
        return TaskEvent.model_validate(item)
    except ValidationError:
        return None
