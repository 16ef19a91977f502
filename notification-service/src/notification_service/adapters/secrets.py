"""Credentials from the Dapr secret store (through the sidecar's secrets API), falling back
to the environment. Read on first use — the sidecar waits for the app to listen first —
and kept for the life of the process."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import httpx

from taskevents.logging import get_logger

log = get_logger(__name__)

SECRET_TIMEOUT_SECONDS = 3.0


class SecretSource:
    def __init__(
        self,
        *,
        store_name: str | None,
        http_port: int,
        fallback: Mapping[str, str | None],
        api_token: str | None = None,
    ) -> None:
        """`fallback` maps each secret name to the value the settings (environment) give."""
        self._store_name = store_name or None
        self._http_port = http_port
        self._fallback = dict(fallback)
        self._api_token = api_token or os.environ.get("DAPR_API_TOKEN")
        self._cache: dict[str, str | None] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> str | None:
        async with self._lock:
            if name not in self._cache:
                value = await self._from_store(name)
                self._cache[name] = value if value is not None else self._fallback.get(name)
            return self._cache[name]

    async def _from_store(self, name: str) -> str | None:
        if self._store_name is None:
            return None
        url = f"http://127.0.0.1:{self._http_port}/v1.0/secrets/{self._store_name}/{name}"
        headers = {"dapr-api-token": self._api_token} if self._api_token else {}
        try:
            async with httpx.AsyncClient(timeout=SECRET_TIMEOUT_SECONDS) as http:
                response = await http.get(url, headers=headers)
        except httpx.HTTPError as error:
            log.warning("secret store unreachable; using the environment", secret=name,
                        error=str(error))  # fmt: skip
            return None
        if response.is_success:
            value = response.json().get(name)
            if isinstance(value, str) and value:
                log.info("credential read from the secret store", secret=name,
                         store=self._store_name)  # fmt: skip
                return value
        return None  # not there (local.env answers an error): the environment decides
