"""A real Prometheus (Debian's package, scripts/prometheus.sh) scraping the session's
cluster and an ops console, configured the way `make run` configures it
(taskevents_cli.prometheus) and with the chart's rules: every app and sidecar is up, and
after real events flowed every panel of the chart's dashboards has data — or, for a panel
whose series only exist once something failed ("Empty until …" in its description), its
query is accepted and every series it names is known to Prometheus."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from taskevents.events import EventType, TaskEvent
from taskevents.publisher import EventPublisher
from taskevents_cli.devrun import ManagedProcess
from taskevents_cli.prometheus import scrape_configuration
from tests.conftest import Cluster
from tests.support.cluster import SERVICES as APP_IDS
from tests.support.cluster import Service
from tests.support.console import running_console
from tests.support.stack import ROOT, SCRIPTS, Stack, free_port
from tests.support.waiting import eventually, eventually_sync

pytestmark = pytest.mark.integration

DASHBOARDS = ROOT / "helm-chart" / "files" / "dashboards"
RULES = ROOT / "helm-chart" / "files" / "prometheus" / "rules.yaml"
# What Grafana puts in for $__rate_interval: the scrape interval here is 1 s.
RATE_INTERVAL = "30s"
METRIC = re.compile(
    r"\b(?:taskevents[a-z_]*:[a-z0-9_:]+|taskevents_[a-z0-9_]+|dapr_[a-z0-9_]+|up(?=\{)|ALERTS)"
)
# Series Prometheus makes itself: every target's `up`, and `ALERTS` while an alert is pending
# or firing.
SYNTHETIC = {"up", "ALERTS"}


def prometheus_bin() -> Path:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "prometheus.sh"), "ensure"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def console(stack: Stack, cluster: Cluster) -> Iterator[Service]:
    with running_console(stack, cluster, []) as service:
        yield service


@pytest.fixture(scope="module")
def watched(cluster: Cluster, console: Service) -> list[Service]:
    return [cluster.cli, *cluster.services.values(), console]


@pytest.fixture(scope="module")
def prometheus_url(stack: Stack, watched: list[Service]) -> Iterator[str]:
    state = stack.log_dir / "prometheus"
    state.mkdir(parents=True, exist_ok=True)
    config = scrape_configuration([s.app.spec for s in watched], scrape_interval="1s")
    (state / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    bin_dir = prometheus_bin()
    # As scripts/prometheus.sh starts it: the cached copy of the package has its UI beside it.
    assets = bin_dir.parent / "share" / "prometheus" / "web"
    ui = [f"--web.local-assets={assets}/"] if bin_dir != Path("/usr/bin") else []
    process = ManagedProcess(
        name="prometheus",
        argv=[
            str(bin_dir / "prometheus"),
            *ui,
            f"--config.file={state / 'prometheus.yml'}",
            f"--storage.tsdb.path={state / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        log_path=state / "prometheus.log",
    )
    process.start()
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            process.check_alive()
            try:
                return httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            eventually_sync(ready, timeout=30, interval=0.2, what="Prometheus ready")
        except TimeoutError as error:
            raise AssertionError(f"{error}:\n{process.tail()}") from error
        yield url
    finally:
        process.stop()


@pytest_asyncio.fixture
async def prometheus(prometheus_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=prometheus_url, timeout=10) as client:
        yield client


async def api(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    response = await client.get(f"/api/v1/{path}", params=params)
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "success", body
    return body["data"]


async def query(client: httpx.AsyncClient, expr: str) -> list[dict[str, Any]]:
    data = await api(client, "query", query=expr)
    return list(data["result"])


async def test_every_app_and_every_sidecar_is_a_target_and_up(
    prometheus: httpx.AsyncClient, watched: list[Service]
) -> None:
    expected = {(s.app_id, "sidecar") for s in watched} | {
        (s.app_id, "app") for s in watched if s.app.spec.app_port
    }

    health: dict[tuple[str, str], str] = {}

    async def all_up() -> bool:
        # Prometheus lists the targets a moment after it is ready, and scrapes them then.
        targets = (await api(prometheus, "targets"))["activeTargets"]
        health.clear()
        health.update({(t["labels"]["app"], t["labels"]["part"]): t["health"] for t in targets})
        return set(health) == expected and set(health.values()) == {"up"}

    try:
        await eventually(all_up, timeout=30, what="every target up")
    finally:
        assert set(health) == expected
        assert all(value == "up" for value in health.values()), health
    # Debian's classic web UI shows them too (its JavaScript from the libjs packages).
    page = await prometheus.get("/classic/targets")
    assert page.status_code == 200, page.text[:300]
    assert all(app_id in page.text for app_id, _ in expected)
    script = await prometheus.get("/classic/static/jquery/jquery.min.js")
    assert script.status_code == 200
    up = await query(prometheus, 'up{part!=""} == 1')
    assert len(up) == len(expected)


def dashboard_targets() -> list[tuple[str, str, str, str]]:
    """(dashboard, panel title, description, expr) of every panel query."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
                found.append((path.stem, panel["title"], panel.get("description", ""), expr))
    return found


def test_the_dashboards_have_panels_on_every_service() -> None:
    names = {d for d, *_ in dashboard_targets()}
    apps = [*APP_IDS, "ops-console"]
    assert names >= {"taskevents-overview", "taskevents-pubsub", *(f"taskevents-{a}" for a in apps)}


async def test_every_dashboard_panel_has_data_after_events_flowed(
    prometheus: httpx.AsyncClient,
    publisher: EventPublisher,
    cluster: Cluster,
    unique: str,
) -> None:
    user_id, task_id = f"user-{unique}", f"task-{unique}"
    # Mail for a created and a completed task, an audit row for each event, and a schedule
    # that fires every 2 s (trigger lateness, outbox relays) until the task is deleted.
    events = [
        TaskEvent.create(
            EventType.TASK_CREATED,
            task_id=task_id,
            user_id=user_id,
            payload={
                "title": "Metrics",
                "user_email": f"{user_id}@example.com",
                "recurrence": {"interval_seconds": 2},
            },
        ),
        TaskEvent.create(
            EventType.TASK_COMPLETED,
            task_id=f"{task_id}-done",
            user_id=user_id,
            payload={"title": "Done", "user_email": f"{user_id}@example.com"},
        ),
    ]
    try:
        for event in events:
            await publisher.publish(event)

        async def flowed() -> bool:
            relayed = await query(
                prometheus, 'taskevents_recurring_outbox_relayed_total{result="published"} > 0'
            )
            delivered = await query(
                prometheus, 'taskevents:pubsub_deliveries:rate5m{status="success"} > 0'
            )
            apps = {s["metric"]["app_id"] for s in delivered}
            return bool(relayed) and apps >= set(cluster.services)

        await eventually(flowed, timeout=60, what="events delivered to every service",
                         check=cluster.check_alive)  # fmt: skip
        known = {m for m in await api(prometheus, "metadata")}
        rule_groups = (await api(prometheus, "rules"))["groups"]
        recorded = {r["name"] for g in rule_groups for r in g["rules"] if r["type"] == "recording"}
        empty: list[str] = []
        for dashboard, title, description, expr in dashboard_targets():
            result = await query(prometheus, expr)
            if result:
                continue
            where = f"{dashboard} / {title}: {expr}"
            if not description.startswith("Empty until"):
                # Panels on rates of recording rules see data a few evaluations in.
                async def has_data(expr: str = expr) -> bool:
                    return bool(await query(prometheus, expr))

                try:
                    await eventually(has_data, timeout=15, what=where)
                except TimeoutError:
                    empty.append(where)
                continue
            names = set(METRIC.findall(expr))
            if not names:
                empty.append(f"{where} (names no series)")
            for name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if not {name, base} & (known | recorded | SYNTHETIC):
                    empty.append(f"{where} ({name} is neither scraped nor recorded)")
        assert not empty, "panels without data or with unknown series:\n" + "\n".join(empty)
    finally:
        await publisher.publish(
            TaskEvent.create(EventType.TASK_DELETED, task_id=task_id, user_id=user_id)
        )


def test_local_rules_are_the_charts() -> None:
    config = scrape_configuration([])
    assert config["rule_files"] == [str(RULES)]
