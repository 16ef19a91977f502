"""One secret from a Dapr secret store, through the sidecar's HTTP API."""

from __future__ import annotations

import httpx
from pydantic import SecretStr


class SecretUnavailableError(Exception):
    pass


async def read_secret(
    *, dapr_http_port: int, store: str, name: str, dapr_api_token: str | None = None
) -> SecretStr:
    url = f"http://127.0.0.1:{dapr_http_port}/v1.0/secrets/{store}/{name}"
    headers = {"dapr-api-token": dapr_api_token} if dapr_api_token else {}
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(url, headers=headers)
    except httpx.HTTPError as error:
        raise SecretUnavailableError(f"sidecar at {url} does not answer: {error}") from None
    if not response.is_success:
        raise SecretUnavailableError(
            f"{store}/{name}: sidecar answered {response.status_code}: {response.text[:200]}"
        )
    value = response.json().get(name)
    if not isinstance(value, str) or not value:
        raise SecretUnavailableError(f"{store}/{name} is empty or missing")
    return SecretStr(value)
