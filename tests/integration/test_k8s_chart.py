"""The Helm chart, rendered by the pinned Helm (scripts/helm.sh) with both values files:
`helm lint`, every object against the Kubernetes schemas (kubernetes-validate) and every
Dapr resource against Dapr's own CRD schemas, the policies the chart promises (probes,
limits, non-root, read-only, Dapr annotations, network policies), the names of DESIGN.md,
and the generated files (Dapr templates, k8s/) being current."""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from taskevents.auth import verifier_from
from tests.support.stack import ROOT
from tests.unit.test_k8s_dockerfiles import dockerfile

pytestmark = pytest.mark.integration

CHART = ROOT / "helm-chart"
VALUES = {
    "minikube": CHART / "values-minikube.yaml",
    "production": CHART / "values-production.yaml",
}
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schemas.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
DAPR_VERSION = "1.18.2"  # scripts/dapr-runtime.sh
RELEASE = "taskevents"
Doc = dict[str, Any]


# --- DESIGN.md ---------------------------------------------------------------------------


def design_names() -> dict[str, str]:
    rows = {}
    for line in (ROOT / "docs" / "DESIGN.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2:
            rows[cells[0]] = cells[1]
    return rows


def design_ports() -> dict[str, int]:
    names = design_names()
    app_ids = re.findall(r"`([a-z-]+)`", names["Dapr app-ids"])
    ports = [int(p) for p in re.findall(r"\b(\d{4})\b", names["app ports (local and in pods)"])]
    assert len(app_ids) == len(ports) == 4
    return dict(zip(app_ids, ports, strict=True))


# --- rendering ---------------------------------------------------------------------------


@cache
def helm_binary() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "helm.sh")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def helm() -> str:
    return helm_binary()


@cache
def render(helm: str, values: str) -> tuple[Doc, ...]:
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", "taskevents",
         "-f", str(VALUES[values])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def of_kind(documents: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


def only(documents: dict[str, Doc], name: str) -> Doc:
    assert name in documents, f"{name} not rendered (have {sorted(documents)})"
    return documents[name]


@pytest.fixture(params=sorted(VALUES))
def rendered(request: pytest.FixtureRequest, helm: str) -> tuple[Doc, ...]:
    return render(helm, request.param)


# --- Dapr CRD schemas --------------------------------------------------------------------


@cache
def dapr_crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> openAPIV3Schema, from the CRDs in the dapr module's Helm chart
    (the module cache already holds it after the runtime build)."""
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"github.com/dapr/dapr@v{DAPR_VERSION}"],
        capture_output=True, text=True, check=False, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    crds = Path(json.loads(result.stdout)["Dir"]) / "charts" / "dapr" / "crds"
    schemas = {}
    for path in sorted(crds.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    assert schemas, f"no CRDs under {crds}"
    return schemas


def unknown_fields(value: Any, schema: Doc, path: str = "") -> Iterator[str]:
    """Fields the API server would silently prune: not declared by a structural schema."""
    if isinstance(value, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                yield from unknown_fields(item, extra, f"{path}.{key}")
            elif properties is not None and path != ".metadata":
                yield f"{path}.{key}"
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def dapr_problems(document: Doc) -> list[str]:
    key = (document["apiVersion"], document["kind"])
    schema = dapr_crd_schemas().get(key)
    if schema is None:
        return [f"no Dapr CRD for {key}"]
    validator = jsonschema.Draft7Validator(schema)
    problems = [
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)
    ]
    problems += [f"{field}: not in the CRD schema" for field in unknown_fields(document, schema)]
    return problems


# --- lint and schemas --------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUES))
def test_helm_lint_passes_strictly(helm: str, values: str) -> None:
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "-f", str(VALUES[values])],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [("services.audit.prot=1", "additional properties 'prot'"),
     ("kafka.authType=sasl", "/kafka/authType"),
     # Dapr's own spelling would reach Kafka as PLAIN from a chart that maps Kafka's names.
     ("kafka.saslMechanism=SHA-512", "/kafka/saslMechanism"),
     ("postgres.tls.verifyFull=true", "/postgres/tls/caSecret/name"),
     ("environment=production,sms.provider=log", "/sms/provider")],
)  # fmt: skip
def test_values_schema_rejects_misspelled_or_invalid_values(
    helm: str, setting: str, complaint: str
) -> None:
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "-f", str(VALUES["minikube"]), "--set", setting],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert complaint in result.stderr


def assert_valid_kubernetes(documents: list[Doc]) -> None:
    for document in documents:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                name = f"{document['kind']}/{document['metadata']['name']}"
                pytest.fail(f"{name} is invalid for Kubernetes {version}: {error}")


def test_every_kubernetes_object_matches_the_api_schemas(rendered: tuple[Doc, ...]) -> None:
    kubernetes = [d for d in rendered if not d["apiVersion"].startswith("dapr.io/")]
    assert len(kubernetes) > 20
    assert_valid_kubernetes(kubernetes)


def test_schema_validation_catches_a_misspelled_field(helm: str) -> None:
    deployment = copy.deepcopy(of_kind(render(helm, "minikube"), "Deployment")["audit-log-service"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    component = copy.deepcopy(of_kind(render(helm, "minikube"), "Component")["kafka-pubsub"])
    component["spec"]["metdata"] = component["spec"].pop("metadata")
    assert dapr_problems(component)


def test_every_dapr_resource_matches_the_dapr_crd_schemas(rendered: tuple[Doc, ...]) -> None:
    dapr = [d for d in rendered if d["apiVersion"].startswith("dapr.io/")]
    kinds = {d["kind"] for d in dapr}
    assert kinds == {"Component", "Configuration", "Resiliency", "Subscription"}
    for document in dapr:
        problems = dapr_problems(document)
        assert not problems, f"{document['kind']}/{document['metadata']['name']}: {problems}"


# --- the services ------------------------------------------------------------------------


def test_four_deployments_with_the_app_ids_and_ports_of_design(rendered: tuple[Doc, ...]) -> None:
    deployments = of_kind(rendered, "Deployment")
    services = of_kind(rendered, "Service")
    for app_id, port in design_ports().items():
        pod = only(deployments, app_id)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        env = {e["name"]: e for e in container["env"]}
        assert env["APP_PORT"]["value"] == str(port)
        service = only(services, app_id)
        assert service["spec"]["ports"][0]["port"] == port
        assert (
            service["spec"]["selector"]
            == only(deployments, app_id)["spec"]["selector"]["matchLabels"]
        )


def test_dapr_annotations_on_every_service_pod(rendered: tuple[Doc, ...]) -> None:
    configurations = of_kind(rendered, "Configuration")
    secrets = of_kind(rendered, "Secret")
    for app_id, port in design_ports().items():
        annotations = of_kind(rendered, "Deployment")[app_id]["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert annotations["dapr.io/enabled"] == "true"
        assert annotations["dapr.io/app-id"] == app_id
        assert annotations["dapr.io/app-port"] == str(port)
        assert annotations["dapr.io/config"] in configurations
        assert annotations["dapr.io/log-as-json"] in ("true", "false")
        assert annotations["dapr.io/enable-metrics"] == "true"
        assert annotations["dapr.io/metrics-port"].isdigit()
        assert annotations["dapr.io/enable-app-health-check"] == "true"
        assert annotations["dapr.io/app-health-check-path"] == "/health"
        for token in ("dapr.io/app-token-secret", "dapr.io/api-token-secret"):
            name = annotations[token]
            # Created by the chart with the key `token`, or an existing Secret (production).
            if name in secrets:
                assert "token" in secrets[name]["stringData"]
        assert annotations["dapr.io/app-token-secret"] != annotations["dapr.io/api-token-secret"]
        for resource in ("cpu", "memory"):
            for bound in ("request", "limit"):
                assert annotations[f"dapr.io/sidecar-{resource}-{bound}"]


def test_probes_resources_and_security_of_every_service_pod(rendered: tuple[Doc, ...]) -> None:
    accounts = of_kind(rendered, "ServiceAccount")
    for app_id in design_ports():
        pod = of_kind(rendered, "Deployment")[app_id]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) >= {"cpu", "memory"}
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        # The one writable place: /tmp, an emptyDir; anything else is mounted read-only.
        mounts = container["volumeMounts"]
        assert mounts[0] == {"name": "tmp", "mountPath": "/tmp"}
        assert all(m.get("readOnly") is True for m in mounts[1:])
        assert pod["volumes"][0]["emptyDir"]
        assert pod["serviceAccountName"] in accounts
        assert pod["terminationGracePeriodSeconds"] >= 30
        image = container["image"]
        assert image.rsplit(":", 1)[0].endswith(f"/{app_id}")


PREFIXES = {
    "notification-service": "NOTIFY_",
    "recurring-task-service": "RECURRING_",
    "audit-log-service": "AUDIT_",
    "websocket-service": "WEBSOCKET_",
}


def test_pods_run_the_images_as_their_dockerfiles_build_them(rendered: tuple[Doc, ...]) -> None:
    for app_id, port in design_ports().items():
        runtime = dockerfile(app_id)[-1]
        uid, _, gid = runtime.all("USER")[-1].arguments.partition(":")
        pod = of_kind(rendered, "Deployment")[app_id]["spec"]["template"]["spec"]
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
            int(uid),
            int(gid),
        )
        assert [e.arguments for e in runtime.all("EXPOSE")] == [str(port)]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        image_env = " ".join(e.arguments for e in runtime.all("ENV"))
        # The image listens on every address (APP_HOST); what the chart sets for the
        # service's own host variable says the same.
        assert "APP_HOST=0.0.0.0" in image_env
        listen = {n: v for n, v in env.items() if n in ("APP_HOST", f"{PREFIXES[app_id]}HOST")}
        assert set(listen.values()) <= {"0.0.0.0"}, listen


def test_every_service_scales_and_has_a_disruption_budget(rendered: tuple[Doc, ...]) -> None:
    autoscalers = of_kind(rendered, "HorizontalPodAutoscaler")
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for app_id in design_ports():
        deployment = of_kind(rendered, "Deployment")[app_id]
        hpa = only(autoscalers, app_id)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": app_id
        }  # fmt: skip
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        # The autoscaler owns the replica count; a fixed one would fight it on upgrades.
        assert "replicas" not in deployment["spec"]
        assert only(budgets, app_id)["spec"]["selector"] == deployment["spec"]["selector"]


def test_websocket_replicas_each_have_a_consumer_group_of_their_own(
    rendered: tuple[Doc, ...],
) -> None:
    pod = of_kind(rendered, "Deployment")["websocket-service"]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    component = of_kind(rendered, "Component")["websocket-pubsub"]
    metadata = {m["name"]: m for m in component["spec"]["metadata"]}
    assert "{podName}" in metadata["consumerID"]["value"]
    assert component["scopes"] == ["websocket-service"]


def test_secrets_reach_the_apps_from_kubernetes_secrets(rendered: tuple[Doc, ...]) -> None:
    deployments = of_kind(rendered, "Deployment")
    for app_id in design_ports():
        env = {
            e["name"]: e
            for e in deployments[app_id]["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        for name in ("APP_API_TOKEN", "DAPR_API_TOKEN"):
            assert env[name]["valueFrom"]["secretKeyRef"]["key"] == "token"
        if "DATABASE_URL" in env:
            assert "secretKeyRef" in env["DATABASE_URL"]["valueFrom"]
        for item in env.values():
            assert "password" not in item.get("value", "").lower()


# --- Dapr resources ----------------------------------------------------------------------


def test_dapr_components_have_the_names_of_design(rendered: tuple[Doc, ...]) -> None:
    names = design_names()
    components = of_kind(rendered, "Component")
    pubsub = re.search(r"`([a-z-]+)` \(type `([a-z.]+)`\)", names["pub/sub component"])
    assert pubsub
    assert only(components, pubsub[1])["spec"]["type"] == pubsub[2]
    store = re.search(r"`([a-z-]+)`", names["state store component"])
    assert store
    assert only(components, store[1])["spec"]["type"].startswith("state.")
    topic, dead_letters = re.findall(r"`([a-z-]+)`", names["topic / dead-letter topic"])
    subscriptions = of_kind(rendered, "Subscription").values()
    subscribed = {s["scopes"][0] for s in subscriptions if s["spec"]["topic"] == topic}
    assert subscribed == set(design_ports())
    for subscription in subscriptions:
        if subscription["spec"]["topic"] == topic:
            assert subscription["spec"]["deadLetterTopic"] == dead_letters
    for component in components.values():
        assert "auth" not in component, "on Kubernetes secrets come from its own secret store"
        for item in component["spec"]["metadata"]:
            assert "{uuid}" not in str(item.get("value", ""))


def test_configuration_turns_on_mtls_tracing_and_metrics(rendered: tuple[Doc, ...]) -> None:
    configurations = of_kind(rendered, "Configuration")
    assert set(configurations) == {"taskevents", "taskevents-audit-log-service"}
    for configuration in configurations.values():
        spec = configuration["spec"]
        assert spec["mtls"]["enabled"] is True
        assert float(spec["tracing"]["samplingRate"]) > 0
        assert spec["metric"]["enabled"] is True
        # Default deny; callers judged in the release's namespace, not the local `default`.
        assert spec["accessControl"]["defaultAction"] == "deny"
        for policy in spec["accessControl"].get("policies", []):
            assert policy["namespace"] == "taskevents"
    pods = {
        name: d["spec"]["template"]["metadata"]["annotations"]["dapr.io/config"]
        for name, d in of_kind(rendered, "Deployment").items()
        if "dapr.io/config" in d["spec"]["template"]["metadata"].get("annotations", {})
    }
    assert pods["audit-log-service"] == "taskevents-audit-log-service"
    assert {pods[name] for name in pods if name != "audit-log-service"} == {"taskevents"}


def test_kafka_credentials_and_tls_in_production(helm: str) -> None:
    documents = render(helm, "production")
    metadata = {
        m["name"]: m for m in of_kind(documents, "Component")["kafka-pubsub"]["spec"]["metadata"]
    }
    assert metadata["authType"]["value"] == "password"
    assert metadata["disableTls"]["value"] == "false"
    assert metadata["saslMechanism"]["value"] == "SHA-512"  # Dapr's name of SCRAM-SHA-512
    # The credentials and the CA from Secrets of their own (kafka.saslSecret, tls.caSecret).
    assert metadata["saslUsername"]["secretKeyRef"] == {
        "name": "taskevents-kafka-user",
        "key": "username",
    }
    assert metadata["saslPassword"]["secretKeyRef"] == {
        "name": "taskevents-kafka-user",
        "key": "password",
    }
    assert metadata["caCert"]["secretKeyRef"] == {"name": "taskevents-kafka-ca", "key": "ca.crt"}
    websocket = {
        m["name"]: m
        for m in of_kind(documents, "Component")["websocket-pubsub"]["spec"]["metadata"]
    }
    for name in ("saslUsername", "saslPassword", "caCert", "disableTls", "saslMechanism"):
        assert websocket[name] == metadata[name]
    # Every secret comes from Secrets made outside Helm; no in-chart infrastructure.
    assert not of_kind(documents, "Secret")
    assert not of_kind(documents, "StatefulSet")
    deployments = of_kind(documents, "Deployment")
    assert set(deployments) == set(design_ports())
    for deployment in deployments.values():
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["TASKEVENTS_ENV"]["value"] == "production"


def test_kafka_credentials_from_the_charts_secret_without_secrets_of_their_own(helm: str) -> None:
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "-f", str(VALUES["minikube"]),
         "--set", "kafka.authType=password,kafka.saslUsername=tasks,kafka.tls.enabled=true",
         "--set", "kafka.tls.caCert=true,kafka.saslMechanism=SCRAM-SHA-256"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    documents = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    metadata = {
        m["name"]: m for m in of_kind(documents, "Component")["kafka-pubsub"]["spec"]["metadata"]
    }
    secret = f"{RELEASE}-secrets"
    assert metadata["saslUsername"]["value"] == "tasks"
    assert metadata["saslPassword"]["secretKeyRef"] == {
        "name": secret,
        "key": "kafka-sasl-password",
    }
    assert metadata["caCert"]["secretKeyRef"] == {"name": secret, "key": "kafka-ca-cert"}
    assert metadata["saslMechanism"]["value"] == "SHA-256"


def postgres_clients(documents: tuple[Doc, ...]) -> dict[str, Doc]:
    """The pod specs that hold DATABASE_URL: services and the migration Job."""
    pods = {
        name: d["spec"]["template"]
        for name, d in {**of_kind(documents, "Deployment"), **of_kind(documents, "Job")}.items()
    }
    return {
        name: pod
        for name, pod in pods.items()
        if any(
            e["name"] == "DATABASE_URL" for c in pod["spec"]["containers"] for e in c.get("env", [])
        )
    }


def test_postgres_verify_full_with_the_ca_from_its_secret_in_production(helm: str) -> None:
    documents = render(helm, "production")
    clients = postgres_clients(documents)
    assert {"audit-log-service", "recurring-task-service", "notification-service"} <= set(clients)
    assert any(name.endswith("-audit-migrate") for name in clients)
    for name, pod in clients.items():
        [container] = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["PGSSLMODE"] == "verify-full", name
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mount = mounts["postgres-ca"]
        assert mount["readOnly"] is True
        assert env["PGSSLROOTCERT"] == f"{mount['mountPath']}/ca.crt", name
        assert volumes["postgres-ca"]["secret"] == {
            "secretName": "taskevents-postgres-ca",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
    # The state store's sidecar: the same CA mounted into daprd, named in the component.
    store = {
        m["name"]: m for m in of_kind(documents, "Component")["statestore"]["spec"]["metadata"]
    }
    notification = clients["notification-service"]
    annotations = notification["metadata"]["annotations"]
    volume, path = annotations["dapr.io/volume-mounts"].split(":")
    assert volume == "postgres-ca"
    assert store["sslRootCert"]["value"] == f"{path}/ca.crt"
    assert annotations["dapr.io/env"] == "PGSSLMODE=verify-full"


def test_postgres_tls_and_sms_are_off_by_default(helm: str) -> None:
    documents = render(helm, "minikube")
    clients = postgres_clients(documents)
    assert {"audit-log-service", "recurring-task-service", "notification-service"} <= set(clients)
    for name, pod in clients.items():
        [container] = pod["spec"]["containers"]
        assert "PGSSLMODE" not in {e["name"] for e in container["env"]}, name
        assert "postgres-ca" not in {v["name"] for v in pod["spec"]["volumes"]}, name
        assert "dapr.io/volume-mounts" not in pod["metadata"].get("annotations", {}), name
    store = of_kind(documents, "Component")["statestore"]["spec"]["metadata"]
    assert "sslRootCert" not in {m["name"] for m in store}


@pytest.mark.parametrize(("values", "provider"), [("minikube", "none"), ("production", "twilio")])
def test_the_sms_provider_is_a_value_of_the_chart(helm: str, values: str, provider: str) -> None:
    deployment = of_kind(render(helm, values), "Deployment")["notification-service"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "NOTIFY_SMS_PROVIDER"] == [provider]


SETTINGS = {
    "audit-log-service": "audit_log_service.settings",
    "notification-service": "notification_service.settings",
    "recurring-task-service": "recurring_task_service.settings",
    "websocket-service": "websocket_service.settings",
}
# What the Secrets an operator makes hold (values-production.yaml's comments), by key.
SECRET_VALUES = {
    "database-url": "postgresql://taskevents:not-a-placeholder@db.example.com:5432/taskevents",
}


@pytest.mark.parametrize("app_id", sorted(SETTINGS))
def test_each_service_starts_with_the_environment_production_gives_it(
    helm: str, app_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's own settings, read from the environment the chart gives its container,
    accept it: every name the chart sets is one the service reads, nothing is a development
    default in production (the token settings, the SMS provider, placeholders)."""
    deployment = of_kind(render(helm, "production"), "Deployment")[app_id]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    for item in container["env"]:
        reference = item.get("valueFrom", {}).get("secretKeyRef")
        value = (
            SECRET_VALUES.get(reference["key"], f"{reference['key']}-from-the-operator-" * 2)
            if reference
            else item.get("value", "pod-0")
        )
        monkeypatch.setenv(item["name"], value)
    settings = importlib.import_module(SETTINGS[app_id]).Settings()
    assert settings.environment == "production"
    assert settings.jwks_url == "https://id.example.com/.well-known/jwks.json"
    assert settings.operator_role == "taskevents-operator"
    # Beside the identity provider no shared key: nobody mints tokens with a Secret's value.
    assert not verifier_from(settings).has_shared_key


def test_without_a_jwks_every_service_gets_the_shared_key(helm: str) -> None:
    for app_id in SETTINGS:
        deployment = of_kind(render(helm, "minikube"), "Deployment")[app_id]
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["TASKEVENTS_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": f"{RELEASE}-secrets",
            "key": "websocket-jwt-secret",
        }
        assert "TASKEVENTS_JWKS_URL" not in env


def test_minikube_runs_its_own_broker_database_and_mail_catcher(helm: str) -> None:
    documents = render(helm, "minikube")
    statefulsets = of_kind(documents, "StatefulSet")
    assert {f"{RELEASE}-redpanda", f"{RELEASE}-postgresql"} <= set(statefulsets)
    assert f"{RELEASE}-mailpit" in of_kind(documents, "Deployment")
    brokers = {
        m["name"]: m for m in of_kind(documents, "Component")["kafka-pubsub"]["spec"]["metadata"]
    }
    assert brokers["brokers"]["value"] == f"{RELEASE}-redpanda:9092"
    topics_job = of_kind(documents, "Job")[f"{RELEASE}-redpanda-topics"]
    script = topics_job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "task-events task-events-dlq -p 6" in script


# --- network policies, migration, ingress ------------------------------------------------


def policy_for(documents: tuple[Doc, ...], labels: dict[str, str]) -> list[Doc]:
    """The NetworkPolicies that select a pod with these labels."""
    selected = []
    for policy in of_kind(documents, "NetworkPolicy").values():
        wanted = policy["spec"]["podSelector"].get("matchLabels", {})
        if all(labels.get(k) == v for k, v in wanted.items()):
            selected.append(policy)
    return selected


def egress_ports(policies: list[Doc]) -> set[int]:
    return {
        port["port"]
        for policy in policies
        for rule in policy["spec"].get("egress", [])
        for port in rule.get("ports", [])
    }


def test_network_policies_deny_by_default_and_allow_what_must_talk(
    rendered: tuple[Doc, ...],
) -> None:
    deployments = of_kind(rendered, "Deployment")
    postgres_users = {"audit-log-service", "recurring-task-service", "notification-service"}
    kafka = {
        m["name"]: m for m in of_kind(rendered, "Component")["kafka-pubsub"]["spec"]["metadata"]
    }["brokers"]["value"]
    kafka_port = int(kafka.split(",")[0].rsplit(":", 1)[1])
    for app_id, port in design_ports().items():
        labels = deployments[app_id]["spec"]["template"]["metadata"]["labels"]
        policies = policy_for(rendered, labels)
        deny = [p for p in policies if "deny" in p["metadata"]["name"]]
        assert deny
        assert not deny[0]["spec"].get("ingress")
        assert not deny[0]["spec"].get("egress")
        ingress_ports = {
            p["port"] for pol in policies for rule in pol["spec"].get("ingress", [])
            for p in rule.get("ports", [])
        }  # fmt: skip
        assert port in ingress_ports
        # The app port, the sidecar's metrics; Dapr's internal gRPC port only where a
        # service is invoked (websocket-service asks the audit log for missed events).
        invoked = app_id == "audit-log-service"
        assert ingress_ports - {port, 9090} == ({50002} if invoked else set())
        egress = egress_ports(policies)
        assert {53, kafka_port} <= egress
        assert (5432 in egress) == (app_id in postgres_users)
        assert (50002 in egress) == (app_id == "websocket-service")
        assert (labels.get("taskevents.io/database-client") == "true") == (app_id in postgres_users)


def test_in_chart_postgres_answers_only_its_clients(helm: str) -> None:
    documents = render(helm, "minikube")
    postgres = of_kind(documents, "NetworkPolicy")[f"{RELEASE}-postgresql"]
    (rule,) = postgres["spec"]["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"]["taskevents.io/database-client"] == "true"
    job = of_kind(documents, "Job")[f"{RELEASE}-audit-migrate"]
    assert job["spec"]["template"]["metadata"]["labels"]["taskevents.io/database-client"] == "true"


def test_migration_job_is_a_helm_hook_running_audit_migrate(rendered: tuple[Doc, ...]) -> None:
    job = of_kind(rendered, "Job")[f"{RELEASE}-audit-migrate"]
    annotations = job["metadata"]["annotations"]
    hooks = set(annotations["helm.sh/hook"].split(","))
    # Before the install only when the database and its Secret exist outside the release.
    external = not of_kind(rendered, "StatefulSet") and not of_kind(rendered, "Secret")
    assert hooks == {"pre-install" if external else "post-install", "pre-upgrade"}
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    audit = of_kind(rendered, "Deployment")["audit-log-service"]["spec"]["template"]["spec"]
    assert container["image"] == audit["containers"][0]["image"]
    assert container["args"] == ["migrate"]  # the image's ENTRYPOINT is audit-log-service
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "dapr.io/enabled" not in job["spec"]["template"]["metadata"].get("annotations", {})


def ingress_backend(ingress: Doc, path: str) -> str | None:
    """The Service an Ingress sends `path` to (Exact, then the longest Prefix match)."""
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    for item in paths:
        if item["pathType"] == "Exact" and item["path"] == path:
            return str(item["backend"]["service"]["name"])
    prefixes = [
        p for p in paths
        if p["pathType"] == "Prefix"
        and (p["path"] == "/" or path == p["path"] or path.startswith(p["path"].rstrip("/") + "/"))
    ]  # fmt: skip
    if not prefixes:
        return None
    return str(max(prefixes, key=lambda p: len(p["path"]))["backend"]["service"]["name"])


def test_ingress_routes_the_live_page_and_websocket(rendered: tuple[Doc, ...]) -> None:
    (ingress,) = of_kind(rendered, "Ingress").values()
    assert ingress_backend(ingress, "/") == ingress_backend(ingress, "/ws") == "websocket-service"
    if ingress_backend(ingress, "/audit/events"):
        assert ingress_backend(ingress, "/audit/events") == "audit-log-service"
        assert ingress_backend(ingress, "/schedules") == "recurring-task-service"
    # Nothing else of websocket-service: /dev/token mints a token for any user in development.
    for path in ("/dev/token", "/metrics", "/docs", "/openapi.json", "/ready"):
        assert ingress_backend(ingress, path) is None, path


# --- restarts and probes -----------------------------------------------------------------


def pod_checksums(documents: tuple[Doc, ...]) -> dict[str, dict[str, str]]:
    return {
        name: {
            key: value
            for key, value in deployment["spec"]["template"]["metadata"]["annotations"].items()
            if key.startswith("checksum/")
        }
        for name, deployment in of_kind(documents, "Deployment").items()
        if name in design_ports()
    }


def render_with(helm: str, chart: Path, *settings: str) -> tuple[Doc, ...]:
    result = subprocess.run(
        [helm, "template", RELEASE, str(chart), "--namespace", "taskevents",
         "-f", str(VALUES["minikube"]), *[a for s in settings for a in ("--set", s)]],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(d for d in yaml.safe_load_all(result.stdout) if d)


def changed(
    before: dict[str, dict[str, str]], after: dict[str, dict[str, str]], key: str
) -> set[str]:
    return {app_id for app_id in before if before[app_id][key] != after[app_id][key]}


def test_pods_restart_when_a_dapr_resource_or_secret_they_read_changes(
    helm: str, tmp_path: Path
) -> None:
    """The pod template carries digests of what daprd and the app read only at start; the
    Kubernetes tier (tests/kubernetes) proves the restarts on a cluster."""
    base = pod_checksums(render_with(helm, CHART))
    assert set(base) == set(design_ports())
    assert base == pod_checksums(render_with(helm, CHART)), "the digests must be deterministic"
    # The Configuration: every sidecar loads it.
    tracing = pod_checksums(render_with(helm, CHART, "dapr.tracing.samplingRate=0.5"))
    assert changed(base, tracing, "checksum/dapr-resources") == set(design_ports())
    assert not changed(base, tracing, "checksum/secrets")
    # A Secret every pod reads.
    token = pod_checksums(render_with(helm, CHART, "dapr.appToken=rotated"))
    assert changed(base, token, "checksum/secrets") == set(design_ports())
    assert not changed(base, token, "checksum/dapr-resources")
    # A resource scoped to one app restarts that app only.
    chart = tmp_path / "helm-chart"
    shutil.copytree(CHART, chart)
    resiliency = chart / "templates" / "dapr" / "resiliency-audit-log-service.yaml"
    resiliency.write_text(
        resiliency.read_text().replace("auditDelivery: 15s", "auditDelivery: 20s")
    )
    scoped = pod_checksums(render_with(helm, chart))
    assert changed(base, scoped, "checksum/dapr-resources") == {"audit-log-service"}


def test_the_dapr_digest_covers_every_dapr_template() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    listed = re.search(r'define "taskevents.daprTemplates" -}}(.*?){{- end', helpers, re.S)
    assert listed
    files = {p.name for p in (CHART / "templates" / "dapr").glob("*.yaml")}
    assert set(listed[1].split()) == files


# What GET /ready may take at most, by service: its checks run one after the other, each
# within the budget the service's source gives it (taskevents.web.sidecar_check 2 s, the
# database checks' acquire + query, notification's SMTP NOOP 2 x 2 s and ledger 5 + 5 s).
READY_BUDGET_SECONDS = {
    "audit-log-service": 2 + 2 + 2,
    "recurring-task-service": 2 + 2 + 2,
    "notification-service": 2 + 4 + 5 + 5,
    "websocket-service": 2,
}


def test_readiness_probes_wait_longer_than_the_checks_behind_them(
    rendered: tuple[Doc, ...],
) -> None:
    for app_id, budget in READY_BUDGET_SECONDS.items():
        pod = of_kind(rendered, "Deployment")[app_id]["spec"]["template"]["spec"]
        probe = pod["containers"][0]["readinessProbe"]
        assert probe["timeoutSeconds"] > budget, app_id
        assert probe["periodSeconds"] >= probe["timeoutSeconds"], app_id


# --- generated files ---------------------------------------------------------------------


def test_chart_dapr_templates_are_generated_from_dapr_components() -> None:
    result = subprocess.run(
        ["python", str(ROOT / "scripts" / "render_chart_components.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_k8s_manifests_are_rendered_from_the_chart(helm: str) -> None:
    result = subprocess.run(
        ["python", str(ROOT / "scripts" / "render_manifests.py"), "--check", "--helm", helm],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifests = [
        d for path in sorted((ROOT / "k8s").glob("*.yaml"))
        for d in yaml.safe_load_all(path.read_text()) if d
    ]  # fmt: skip
    namespaces = [d for d in manifests if d["kind"] == "Namespace"]
    assert [n["metadata"]["name"] for n in namespaces] == ["taskevents"]
    for document in manifests:
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == "taskevents"


def test_migration_job_runs_where_the_audit_log_may_run(helm: str) -> None:
    # Found on the lab's real node: pods pinned to a tainted node, the hook Job elsewhere.
    documents = render_with(
        helm, ROOT / "helm-chart",
        "serviceDefaults.nodeSelector.pool=events",
        "serviceDefaults.tolerations[0].key=dedicated",
        "serviceDefaults.tolerations[0].operator=Exists",
    )  # fmt: skip
    job = of_kind(documents, "Job")[f"{RELEASE}-audit-migrate"]["spec"]["template"]["spec"]
    audit = of_kind(documents, "Deployment")["audit-log-service"]["spec"]["template"]["spec"]
    assert job["nodeSelector"] == audit["nodeSelector"] == {"pool": "events"}
    assert job["tolerations"] == audit["tolerations"]
    assert job["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
