"""HTTP to the sidecars (their API and metrics) and, through the console's own sidecar, to
the other services (Dapr service invocation)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ops_console.ports import Answer, ServiceUnavailableError
from ops_console.settings import SidecarTarget


def _answer(response: httpx.Response) -> Answer:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:2000]
    return Answer(status=response.status_code, body=body)


class HttpSidecars:
    def __init__(self, *, timeout_seconds: float, dapr_api_token: str | None) -> None:
        headers = {"dapr-api-token": dapr_api_token} if dapr_api_token else {}
        self._http = httpx.AsyncClient(timeout=timeout_seconds, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def get(self, url: str, *, timeout: float | None = None) -> Answer:
        try:
            response = await self._http.get(url, timeout=timeout or httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as error:
            raise ServiceUnavailableError(f"{url}: {type(error).__name__}: {error}") from None
        return _answer(response)

    async def metrics_text(self, target: SidecarTarget) -> str:
        if target.metrics_url is None:
            return ""
        try:
            response = await self._http.get(target.metrics_url)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ServiceUnavailableError(f"{target.metrics_url}: {error}") from None
        return response.text


class DaprInvoker:
    """Calls another app through the console's sidecar, with the operator's bearer token
    (the services decide what an operator may do) and their name for the record."""

    def __init__(
        self, *, dapr_http_port: int, timeout_seconds: float, dapr_api_token: str | None
    ) -> None:
        self._base = f"http://127.0.0.1:{dapr_http_port}/v1.0/invoke"
        headers = {"dapr-api-token": dapr_api_token} if dapr_api_token else {}
        self._http = httpx.AsyncClient(timeout=timeout_seconds, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def invoke(
        self,
        app_id: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        authorization: str | None = None,
        operator: str | None = None,
        json: Any = None,
    ) -> Answer:
        headers = {}
        if authorization:
            headers["Authorization"] = authorization
        if operator:
            headers["X-Operator"] = operator
        url = f"{self._base}/{app_id}/method/{path.lstrip('/')}"
        try:
            response = await self._http.request(
                method, url, params=params, headers=headers, json=json
            )
        except httpx.HTTPError as error:
            raise ServiceUnavailableError(
                f"{app_id} through the sidecar: {type(error).__name__}: {error}"
            ) from None
        return _answer(response)
