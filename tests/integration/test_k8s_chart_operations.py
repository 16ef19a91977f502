"""The chart's operations parts, rendered by the pinned Helm with every toggle on: the ops
console (Deployment with its Dapr annotations, Service, read-only RBAC, what it watches,
network policies both ways), the PodMonitors that scrape both the apps and their sidecars,
the PrometheusRule made of the rules file `make run` uses, and the dashboards as ConfigMaps
for Grafana's sidecar. Off by default, and valid against the Kubernetes schemas when on."""

from __future__ import annotations

import json
import subprocess
from functools import cache

import pytest
import yaml

from tests.integration.test_k8s_chart import (
    CHART,
    RELEASE,
    VALUES,
    Doc,
    assert_valid_kubernetes,
    design_ports,
    helm_binary,
    of_kind,
    only,
    policy_for,
    render,
)

pytestmark = pytest.mark.integration

EVERYTHING_ON = (
    "console.enabled=true",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
)
FILES = CHART / "files"
CONSOLE = "ops-console"


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_binary()


@cache
def render_on(helm: str, values: str, *extra: str) -> tuple[Doc, ...]:
    settings = [a for s in (*EVERYTHING_ON, *extra) for a in ("--set", s)]
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", "taskevents",
         "-f", str(VALUES[values]), *settings],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


@pytest.fixture(params=sorted(VALUES))
def values(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def rendered(helm: str, values: str) -> tuple[Doc, ...]:
    return render_on(helm, values)


def test_all_of_it_is_off_by_default(helm: str, values: str) -> None:
    documents = render(helm, values)
    kinds = {d["kind"] for d in documents}
    assert not kinds & {"PodMonitor", "PrometheusRule", "Role", "RoleBinding"}
    assert CONSOLE not in of_kind(documents, "Deployment")
    assert not [d for d in of_kind(documents, "ConfigMap").values() if "grafana_dashboard" in
                d["metadata"].get("labels", {})]  # fmt: skip


def test_helm_lint_passes_strictly_with_everything_on(helm: str, values: str) -> None:
    settings = [a for s in EVERYTHING_ON for a in ("--set", s)]
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(VALUES[values]), *settings],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_refuses_a_misspelled_toggle(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "-f", str(VALUES["minikube"]),
         "--set", "monitoring.podMonitor.enable=true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "additional properties 'enable'" in result.stderr


def test_every_kubernetes_object_of_it_matches_the_api_schemas(rendered: tuple[Doc, ...]) -> None:
    # What the toggles add or change (the rest is test_k8s_chart.py's); the Prometheus
    # Operator's kinds have no schema here.
    def added(document: Doc) -> bool:
        name = document["metadata"]["name"]
        return document["kind"] in {"Role", "RoleBinding", "NetworkPolicy"} or (
            document["apiVersion"] in {"v1", "apps/v1"}
            and (CONSOLE in name or "-dashboard-" in name)
        )

    core = [d for d in rendered if added(d)]
    assert len(core) > 10
    assert_valid_kubernetes(core)


def test_the_console_runs_beside_a_sidecar_and_watches_every_app(
    rendered: tuple[Doc, ...],
) -> None:
    deployment = only(of_kind(rendered, "Deployment"), CONSOLE)
    template = deployment["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["dapr.io/enabled"] == "true"
    assert annotations["dapr.io/app-id"] == CONSOLE
    assert annotations["dapr.io/app-port"] == "8005"
    assert annotations["prometheus.io/port"] == "8005"
    (container,) = template["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["APP_PORT"]["value"] == "8005"
    assert env["DAPR_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert env["APP_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert env["CONSOLE_KAFKA_BROKERS"]["value"]
    targets = {t["app_id"]: t for t in json.loads(env["CONSOLE_TARGETS"]["value"])}
    assert set(targets) == {*design_ports(), CONSOLE}
    for app_id, port in design_ports().items():
        assert targets[app_id]["app_url"] == f"http://{app_id}:{port}"
        # The Dapr operator's headless Service of the app's sidecars.
        assert targets[app_id]["dapr_http_url"] == f"http://{app_id}-dapr:3500"
        assert targets[app_id]["metrics_url"] == f"http://{app_id}-dapr:9090/"
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    service = only(of_kind(rendered, "Service"), CONSOLE)
    assert service["spec"]["ports"][0]["port"] == 8005
    account = template["spec"]["serviceAccountName"]
    assert account in of_kind(rendered, "ServiceAccount")


def test_the_console_reads_the_broker_with_the_components_credentials(helm: str) -> None:
    """Production's SASL_SSL broker: the console's own Kafka client gets the user and the CA
    from the same existing Secrets as the pubsub components; on Minikube (plain Kafka) it gets
    neither."""
    production = only(of_kind(render_on(helm, "production"), "Deployment"), CONSOLE)
    spec = production["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KAFKA_SASL_MECHANISM"]["value"].startswith("SCRAM-")
    for name in ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"]
    ca_file = env["KAFKA_CA_FILE"]["value"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert ca_file == f"{mounts['kafka-ca']}/ca.crt"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kafka-ca"]["secret"]["secretName"]

    default = only(of_kind(render_on(helm, "minikube"), "Deployment"), CONSOLE)
    (plain,) = default["spec"]["template"]["spec"]["containers"]
    assert not {e["name"] for e in plain["env"]} & {"KAFKA_SECURITY_PROTOCOL", "KAFKA_CA_FILE"}


def test_the_console_may_only_read(rendered: tuple[Doc, ...]) -> None:
    deployment = only(of_kind(rendered, "Deployment"), CONSOLE)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    roles = [d for d in rendered if d["kind"] == "Role"]
    bindings = [d for d in rendered if d["kind"] == "RoleBinding"]
    assert {r["metadata"]["namespace"] for r in roles} == {"taskevents", "dapr-system"}
    for role in roles:
        for rule in role["rules"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        resources = {r for rule in role["rules"] for r in rule["resources"]}
        if role["metadata"]["namespace"] == "taskevents":
            assert resources == {"pods", "pods/log", "events", "deployments"}
        else:
            assert resources == {"pods"}
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": "taskevents"}
        ]
        assert binding["roleRef"]["kind"] == "Role"


def test_network_policies_let_the_console_reach_the_apps_and_sidecars(
    rendered: tuple[Doc, ...],
) -> None:
    deployments = of_kind(rendered, "Deployment")
    console_labels = deployments[CONSOLE]["spec"]["template"]["metadata"]["labels"]
    own = [p for p in policy_for(rendered, console_labels) if "deny" not in p["metadata"]["name"]]
    egress = {p["port"] for pol in own for r in pol["spec"].get("egress", [])
              for p in r.get("ports", [])}  # fmt: skip
    brokers = {
        m["name"]: m for m in of_kind(rendered, "Component")["kafka-pubsub"]["spec"]["metadata"]
    }["brokers"]
    kafka_port = int(brokers["value"].split(",")[0].rsplit(":", 1)[1]) if "value" in brokers else 0
    assert {*design_ports().values(), 3500, 9090, 50002} <= egress
    assert not kafka_port or kafka_port in egress
    for app_id, port in design_ports().items():
        labels = deployments[app_id]["spec"]["template"]["metadata"]["labels"]
        from_console = {
            p["port"]
            for pol in policy_for(rendered, labels)
            for rule in pol["spec"].get("ingress", [])
            for peer in rule.get("from", [])
            if peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
            == CONSOLE
            for p in rule["ports"]
        }
        assert from_console == {port, 3500, 9090, 50002}, app_id


def test_pod_monitors_scrape_every_app_and_its_sidecar_with_the_rules_labels(
    rendered: tuple[Doc, ...],
) -> None:
    monitors = of_kind(rendered, "PodMonitor")
    assert set(monitors) == {*design_ports(), CONSOLE}
    deployments = of_kind(rendered, "Deployment")
    for app_id, monitor in monitors.items():
        selector = monitor["spec"]["selector"]["matchLabels"]
        pod_labels = deployments[app_id]["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        endpoints = {e["port"]: e for e in monitor["spec"]["podMetricsEndpoints"]}
        assert set(endpoints) == {"http", "dapr-metrics"}
        assert endpoints["http"]["path"] == "/metrics"
        for port, part in (("http", "app"), ("dapr-metrics", "sidecar")):
            labels = {r["targetLabel"]: r["replacement"] for r in endpoints[port]["relabelings"]}
            assert (labels["app"], labels["part"]) == (app_id, part)


def test_the_prometheus_rule_is_the_rules_file(rendered: tuple[Doc, ...]) -> None:
    (rule,) = of_kind(rendered, "PrometheusRule").values()
    assert rule["spec"] == yaml.safe_load((FILES / "prometheus" / "rules.yaml").read_text())


def test_every_dashboard_is_a_configmap_for_the_grafana_sidecar(
    rendered: tuple[Doc, ...],
) -> None:
    maps = [
        d for d in of_kind(rendered, "ConfigMap").values()
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]  # fmt: skip
    shipped = {}
    for config_map in maps:
        ((name, text),) = config_map["data"].items()
        shipped[name] = json.loads(text)
    files = {p.name: json.loads(p.read_text()) for p in (FILES / "dashboards").glob("*.json")}
    assert shipped == files
    assert len(files) >= 7


def test_the_dashboard_label_and_namespace_follow_the_values(helm: str) -> None:
    documents = render_on(
        helm, "minikube",
        "monitoring.dashboards.label=grafana_folder_dashboard",
        "monitoring.dashboards.labelValue=taskevents",
        "monitoring.dashboards.namespace=monitoring",
    )  # fmt: skip
    maps = [d for d in of_kind(documents, "ConfigMap").values()
            if "grafana_folder_dashboard" in d["metadata"]["labels"]]  # fmt: skip
    assert maps
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_folder_dashboard"] == "taskevents"
        assert config_map["metadata"]["namespace"] == "monitoring"
