"""The console's pure parts: daprd's counters read from real /metrics text, rates from two
samples, lag arithmetic, stall detection, the process table, the run file; and the app's
rule that nothing but the shells and the login is served without an operator's token."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from ops_console.adapters.procfs import ProcessTable, parse_argv, sidecar_files
from ops_console.adapters.run_file import targets_from_run_file
from ops_console.app import create_app
from ops_console.bootstrap import Services, bootstrap
from ops_console.deliveries import Counts, DeliverySample, Route, parse_delivery_counts, rates
from ops_console.lag import (
    GroupPartition,
    LagSample,
    PartitionLag,
    app_of_group,
    detect_stalls,
    partition_lags,
)
from ops_console.ports import ServiceUnavailableError
from ops_console.sampler import Sampler
from ops_console.settings import LOCAL_TARGETS, Settings, SidecarTarget

ROOT = Path(__file__).resolve().parents[2]

# As daprd 1.18 serves it: a plain subscription, a bulk one, and series to ignore.
DAPRD_METRICS = """\
# HELP dapr_component_pubsub_ingress_count The number of incoming messages arriving from the pub/sub component.
# TYPE dapr_component_pubsub_ingress_count counter
dapr_component_pubsub_ingress_count{app_id="notification-service",component="kafka-pubsub",namespace="",process_status="success",status="success",topic="task-events"} 1477
dapr_component_pubsub_ingress_count{app_id="notification-service",component="kafka-pubsub",namespace="",process_status="retry",status="retry",topic="task-events"} 12
dapr_component_pubsub_ingress_count{app_id="notification-service",component="kafka-pubsub",namespace="",process_status="drop",status="drop",topic="task-events"} 2
# HELP dapr_component_pubsub_ingress_latencies The consuming app event processing latency.
# TYPE dapr_component_pubsub_ingress_latencies histogram
dapr_component_pubsub_ingress_latencies_bucket{app_id="notification-service",component="kafka-pubsub",namespace="",process_status="success",status="success",topic="task-events",le="1"} 0
dapr_component_pubsub_ingress_latencies_sum{app_id="notification-service",component="kafka-pubsub",namespace="",process_status="success",status="success",topic="task-events"} 9000
dapr_component_pubsub_ingress_latencies_count{app_id="notification-service",component="kafka-pubsub",namespace="",process_status="success",status="success",topic="task-events"} 1477
# HELP dapr_component_pubsub_ingress_bulk_count The number of incoming bulk subscribe calls arriving from the bulk pub/sub component.
# TYPE dapr_component_pubsub_ingress_bulk_count counter
dapr_component_pubsub_ingress_bulk_count{app_id="audit-log-service",component="pubsubName",namespace="",process_status="",topic="task-events"} 40
# HELP dapr_component_pubsub_ingress_bulk_event_count Total number of incoming messages arriving from the bulk pub/sub component via Bulk Subscribe.
# TYPE dapr_component_pubsub_ingress_bulk_event_count counter
dapr_component_pubsub_ingress_bulk_event_count{app_id="audit-log-service",component="pubsubName",namespace="",process_status="SUCCESS",topic="task-events"} 574
dapr_component_pubsub_ingress_bulk_event_count{app_id="audit-log-service",component="pubsubName",namespace="",process_status="RETRY",topic="task-events"} 6
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7961950941e+09
"""  # noqa: E501


def test_delivery_counts_are_read_per_app_and_topic_from_daprd_text() -> None:
    counts = parse_delivery_counts(DAPRD_METRICS)
    assert counts == {
        Route("notification-service", "task-events"): Counts(success=1477, retry=12, drop=2),
        Route("audit-log-service", "task-events"): Counts(success=574, retry=6, drop=0),
    }


def test_text_without_delivery_counters_has_no_routes() -> None:
    assert parse_delivery_counts("# TYPE up gauge\nup 1\n") == {}


def test_rates_are_the_difference_of_two_samples_per_second() -> None:
    route = Route("audit-log-service", "task-events")
    before = DeliverySample(at=100.0, counts={route: Counts(success=10, retry=2)})
    after = DeliverySample(at=104.0, counts={route: Counts(success=30, retry=2, drop=4)})
    [rate] = rates(before, after)
    assert rate.totals == Counts(success=30, retry=2, drop=4)
    assert rate.per_second == Counts(success=5.0, retry=0.0, drop=1.0)


def test_a_restarted_sidecar_counts_from_zero_not_negative() -> None:
    route = Route("notification-service", "task-events")
    before = DeliverySample(at=0.0, counts={route: Counts(success=500)})
    after = DeliverySample(at=2.0, counts={route: Counts(success=8)})
    assert rates(before, after)[0].per_second.success == 4.0


def test_a_first_sample_has_totals_and_no_rate() -> None:
    route = Route("a", "t")
    [rate] = rates(None, DeliverySample(at=1.0, counts={route: Counts(success=3)}))
    assert rate.per_second == Counts()


def test_lag_is_end_minus_committed_on_the_partitions_the_group_reads() -> None:
    committed = {("task-events", 0): 90, ("task-events", 1): 50}
    ends = {("task-events", 0): 100, ("task-events", 1): 50, ("task-events", 2): 7,
            ("task-events-dlq", 0): 3}  # fmt: skip
    lags = partition_lags("audit-log-service", committed, ends, ["task-events", "task-events-dlq"])
    assert [(p.key.partition, p.committed, p.lag) for p in lags] == [
        (0, 90, 10),
        (1, 50, 0),
        (2, None, 7),  # never committed there: behind by the whole partition
    ]  # and nothing on the DLQ, which this group never read


def test_lag_is_never_negative() -> None:
    assert PartitionLag(GroupPartition("g", "t", 0), committed=12, end=10).lag == 0


def sample(at: float, lags: dict[tuple[str, int], int], members: int = 1) -> LagSample:
    return LagSample(
        at=at,
        partitions=tuple(
            PartitionLag(GroupPartition(group, "task-events", p), committed=0, end=lag)
            for (group, p), lag in lags.items()
        ),
        members={group: members for group, _ in lags},
    )


def test_growing_lag_without_deliveries_is_a_stall() -> None:
    before = sample(0, {("notification-service", 0): 3, ("notification-service", 1): 0})
    now = sample(5, {("notification-service", 0): 5, ("notification-service", 1): 2})
    [stall] = detect_stalls(before, now, {("notification-service", "task-events"): 0.0})
    assert (stall.group, stall.lag_before, stall.lag_now) == ("notification-service", 3, 7)
    assert "delivers nothing" in stall.reason


def test_growing_lag_while_delivering_is_load_not_a_stall() -> None:
    before = sample(0, {("audit-log-service", 0): 3})
    now = sample(5, {("audit-log-service", 0): 9})
    assert detect_stalls(before, now, {("audit-log-service", "task-events"): 40.0}) == []


def test_shrinking_or_steady_lag_is_not_a_stall() -> None:
    before = sample(0, {("g", 0): 9})
    assert detect_stalls(before, sample(5, {("g", 0): 9}), {}) == []
    assert detect_stalls(before, sample(5, {("g", 0): 2}), {}) == []


def test_a_group_without_consumers_and_growing_lag_is_stalled_whatever_its_app_does() -> None:
    before = sample(0, {("websocket-service-a", 0): 1}, members=0)
    now = sample(5, {("websocket-service-a", 0): 4}, members=0)
    [stall] = detect_stalls(before, now, {("websocket-service-a", "task-events"): 12.0})
    assert stall.members == 0
    assert "no consumer" in stall.reason


def test_one_sample_says_nothing_about_stalls() -> None:
    assert detect_stalls(None, sample(0, {("g", 0): 100}), {}) == []


def test_a_group_belongs_to_the_longest_app_id_it_is_named_after() -> None:
    apps = ["websocket-service", "audit-log-service", "audit-log-service-x"]
    assert app_of_group("audit-log-service", apps) == "audit-log-service"
    assert app_of_group("websocket-service-9f3c", apps) == "websocket-service"
    assert app_of_group("audit-log-service-x-1", apps) == "audit-log-service-x"
    assert app_of_group("audit-log-servicex", apps) is None


def test_the_default_sidecars_are_those_of_dapr_yaml() -> None:
    assert targets_from_run_file(ROOT / "dapr.yaml") == LOCAL_TARGETS


def test_the_console_sits_where_the_design_puts_it() -> None:
    console = next(t for t in LOCAL_TARGETS if t.app_id == "ops-console")
    assert (console.app_url, console.dapr_http_url) == (
        "http://127.0.0.1:8005",
        "http://127.0.0.1:3505",
    )
    assert Settings().port == 8005


def fake_proc(root: Path, pid: int, argv: list[str], start_ticks: int) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    fields = ["S", *["0"] * 18, str(start_ticks), *["0"] * 20]
    (root / str(pid) / "stat").write_text(f"{pid} (da pr d) {' '.join(fields)}\n")


def test_the_process_table_finds_dapr_programs_with_their_flags_and_start(
    tmp_path: Path,
) -> None:
    (tmp_path / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    resources = tmp_path / "res"
    resources.mkdir()
    (resources / "resiliency.yaml").write_text(
        "kind: Resiliency\nmetadata: {name: r}\nscopes: [a]\n---\n"
        "kind: Resiliency\nmetadata: {name: other}\nscopes: [b]\n"
    )
    (resources / "subscriptions.yaml").write_text(
        "kind: Subscription\nspec: {pubsubname: p, topic: t, bulkSubscribe: {enabled: true}}\n"
        "scopes: [a]\n---\n"
        "kind: Subscription\nspec: {pubsubname: p, topic: u, bulkSubscribe: {enabled: true}}\n"
        "scopes: [b]\n"
    )
    config = tmp_path / "configuration.yaml"
    config.write_text("kind: Configuration\nmetadata: {name: c}\n")
    fake_proc(tmp_path, 41, ["/x/daprd", "--app-id", "a", "--dapr-http-port", "3601",
              "--resources-path", str(resources), "--config", str(config)], 100 * 100)  # fmt: skip
    fake_proc(tmp_path, 42, ["/x/placement", "--port=50005"], 0)
    fake_proc(tmp_path, 43, ["python", "-m", "something"], 0)
    (tmp_path / "self").mkdir()
    table = ProcessTable(tmp_path)
    found = table.dapr_processes()
    assert [(p.program, p.pid, p.app_id) for p in found] == [
        ("daprd", 41, "a"),
        ("placement", 42, None),
    ]
    daprd = table.sidecar_on(3601)
    assert daprd is not None
    ticks = __import__("os").sysconf("SC_CLK_TCK")
    assert daprd.started_at == 1700000000 + 100 * 100 / ticks
    files = sidecar_files(daprd)
    assert [r["metadata"]["name"] for r in files["resiliency"]] == ["r"]
    assert files["configuration"]["metadata"]["name"] == "c"
    assert files["bulk"] == {"p/t": {"enabled": True}}
    assert found[1].flags == {"--port": "50005"}


def test_argv_flags_take_separate_or_joined_values_and_repeat_resources() -> None:
    flags, resources = parse_argv(
        ["daprd", "--app-id", "x", "--resources-path", "a", "--resources-path=b", "-log-level=info"]
    )
    assert flags == {"--app-id": "x", "--log-level": "info"}
    assert resources == ("a", "b")


# The app ------------------------------------------------------------------------------

SECRET = "unit-test-secret-of-enough-length-for-hs256"


def token(user_id: str, *roles: str) -> str:
    claims: dict[str, Any] = {"sub": user_id, "exp": datetime.now(UTC) + timedelta(minutes=5)}
    if roles:
        claims["roles"] = list(roles)
    return jwt.encode(claims, SECRET, algorithm="HS256")


class SilentBroker:
    async def lag(self, groups: Any, app_ids: Any) -> LagSample:
        raise ServiceUnavailableError("no broker in a unit test")

    async def depth(self, topic: str) -> int:
        raise ServiceUnavailableError("no broker in a unit test")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        environment="development",
        jwt_secret=SECRET,
        targets=[SidecarTarget(app_id="a", dapr_http_url="http://127.0.0.1:9")],
        sample_seconds=60,
        proc_root=tmp_path,
    )
    (tmp_path / "stat").write_text("btime 0\n")

    @asynccontextmanager
    async def without_broker(settings: Settings) -> AsyncIterator[Services]:
        async with bootstrap(settings) as services:
            sampler = Sampler(
                sidecars=services.sidecars,
                broker=SilentBroker(),
                targets=services.targets,
                groups=None,
                dead_letter_topic="task-events-dlq",
                interval_seconds=60,
            )
            yield dataclasses.replace(services, sampler=sampler)

    with TestClient(create_app(settings, bootstrap=without_broker)) as client:
        yield client


DATA_ROUTES = [
    ("GET", "/api/apps"),
    ("GET", "/api/apps/a"),
    ("GET", "/api/pubsub"),
    ("GET", "/api/dead-letters"),
    ("POST", "/api/dead-letters/1/replay"),
    ("DELETE", "/api/dead-letters/1"),
    ("GET", "/api/events"),
    ("GET", "/api/tasks/t-1"),
    ("GET", "/api/control-plane"),
]


@pytest.mark.parametrize(("method", "path"), DATA_ROUTES)
def test_data_needs_an_operators_token(client: TestClient, method: str, path: str) -> None:
    assert client.request(method, path).status_code == 401
    user = {"Authorization": f"Bearer {token('ada')}"}
    assert client.request(method, path, headers=user).status_code == 403


def test_an_operator_gets_data(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {token('op', 'operator')}"}
    apps = client.get("/api/apps", headers=headers)
    assert apps.status_code == 200
    [app] = apps.json()
    assert app["app_id"] == "a"
    assert app["sidecar_healthy"] is False
    assert "127.0.0.1:9" in app["sidecar_problem"]
    assert client.get("/api/control-plane", headers=headers).json() == {"processes": []}


@pytest.mark.parametrize(
    "path", ["/login", "/apps", "/apps/a", "/pubsub", "/dead-letters", "/events", "/control-plane"]
)
def test_the_shells_hold_no_data_and_need_no_token(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert "/static/console.js" in response.text
    assert "text/html" in response.headers["content-type"]


def test_an_unknown_app_is_404_for_an_operator(client: TestClient) -> None:
    headers = {"Authorization": f"Bearer {token('op', 'operator')}"}
    assert client.get("/api/apps/nope", headers=headers).status_code == 404


def test_the_events_page_links_trace_ids_to_the_trace_store(client: TestClient) -> None:
    page = client.get("/events").text
    assert 'data-traces-url="http://127.0.0.1:16686/api/traces"' in page
    script = client.get("/static/console.js").text
    assert "traceLink(e.trace_id)" in script
