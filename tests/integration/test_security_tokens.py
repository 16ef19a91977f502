"""Both Dapr tokens are on, as in `make run` and the chart: a sidecar's API refuses a caller
without the Dapr API token, and an app refuses a delivery without the app API token."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Cluster
from tests.support.cluster import SERVICES

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("app_id", SERVICES)
async def test_a_sidecar_refuses_calls_without_the_dapr_api_token(
    cluster: Cluster, http: httpx.AsyncClient, app_id: str
) -> None:
    url = f"http://127.0.0.1:{cluster[app_id].dapr_http_port}/v1.0/metadata"
    refused = await http.get(url)
    assert refused.status_code == 401, refused.text
    wrong = await http.get(url, headers={"dapr-api-token": "guessed"})
    assert wrong.status_code == 401
    allowed = await http.get(url, headers={"dapr-api-token": cluster.stack.dapr_api_token})
    assert allowed.status_code == 200
    assert allowed.json()["id"] == app_id


@pytest.mark.parametrize("app_id", SERVICES)
async def test_an_app_refuses_deliveries_without_the_app_api_token(
    cluster: Cluster, http: httpx.AsyncClient, app_id: str
) -> None:
    url = f"{cluster[app_id].url}/events/task-events"
    refused = await http.post(url, content=b"{}", headers={"dapr-api-token": "guessed"})
    assert refused.status_code == 401
    assert (await http.post(url, content=b"{}")).status_code == 401
    # With the token the route answers as the edge does: an unreadable event is put on the
    # dead-letter topic by the app itself, with its reason, and acknowledged.
    answered = await http.post(
        url, content=b"{}", headers={"dapr-api-token": cluster.stack.app_api_token}
    )
    assert answered.status_code == 200
    assert answered.json()["status"] == "SUCCESS"
