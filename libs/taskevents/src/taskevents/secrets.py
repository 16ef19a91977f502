"""Secrets from a Dapr secret store, through the local sidecar's HTTP API. Read on first use,
never at start-up: the sidecar waits for the app to listen before it answers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

import httpx

from taskevents.logging import get_logger

log = get_logger(__name__)

SECRET_TIMEOUT_SECONDS = 5.0


class SecretUnavailableError(Exception):
    """The sidecar does not answer, or the store has no such secret (or an empty one)."""


class DaprSecrets:
    def __init__(
        self,
        *,
        store: str,
        http_port: int,
        api_token: str | None = None,
        timeout_seconds: float = SECRET_TIMEOUT_SECONDS,
    ) -> None:
        self.store = store
        self._http_port = http_port
        # The Dapr API token guards the sidecar's API; daprd hands it to the app as DAPR_API_TOKEN.
        self._api_token = api_token or os.environ.get("DAPR_API_TOKEN")
        self._timeout_seconds = timeout_seconds

    async def read(self, name: str) -> str:
        url = f"http://127.0.0.1:{self._http_port}/v1.0/secrets/{self.store}/{name}"
        headers = {"dapr-api-token": self._api_token} if self._api_token else {}
        try:
            async with httpx.AsyncClient(timeout=self._timeout_seconds) as http:
                response = await http.get(url, headers=headers)
        except httpx.HTTPError as error:
            raise SecretUnavailableError(f"sidecar at {url} does not answer: {error}") from None
        if not response.is_success:
            raise SecretUnavailableError(
                f"{self.store}/{name}: sidecar answered {response.status_code}: "
                f"{response.text[:200]}"
            )
        value = response.json().get(name)
        if not isinstance(value, str) or not value:
            raise SecretUnavailableError(f"{self.store}/{name} is empty or missing")
        return value


class SecretsWithFallback:
    """Credentials from the store when it has them, else the value the settings (the
    environment) give; each read once and kept for the life of the process."""

    def __init__(self, store: DaprSecrets | None, fallback: Mapping[str, str | None]) -> None:
        self._store = store
        self._fallback = dict(fallback)
        self._cache: dict[str, str | None] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> str | None:
        async with self._lock:
            if name not in self._cache:
                self._cache[name] = await self._from_store(name) or self._fallback.get(name)
            return self._cache[name]

    async def _from_store(self, name: str) -> str | None:
        if self._store is None:
            return None
        try:
            value = await self._store.read(name)
        except SecretUnavailableError as error:
            # Not there (local.env answers an error) or unreachable: the environment decides.
            log.info("secret not in the store; using the environment", secret=name,
                     error=str(error))  # fmt: skip
            return None
        log.info("credential read from the secret store", secret=name, store=self._store.store)
        return value
