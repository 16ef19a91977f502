"""The chart installed on a real API server with Dapr's real control plane
(scripts/k8s/cluster.sh): what Minikube would admit and inject, read back from the API.

kwok stands in for the kubelet, so pods are scheduled and reported Running (Job pods
Succeeded) but no container runs: this tier proves admission, Dapr's sidecar injection,
Dapr's CRDs and conversion webhook, Helm's hooks, upgrades, rollbacks and uninstalls.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubernetes.conftest import APP_IDS, CHART, DAPRD_IMAGE, RELEASE, Doc, Lab, wait_for

VALUES = {
    "minikube": CHART / "values-minikube.yaml",
    "production": CHART / "values-production.yaml",
}
# What an operator creates before installing with values-production.yaml (its comments).
PRODUCTION_SECRETS = {
    "taskevents-secrets": {
        "database-url": "postgresql://taskevents:pw@db.example.com:5432/taskevents?sslmode=verify-full",
        "websocket-jwt-secret": "production-jwt-secret-from-the-operator",
        "smtp-password": "smtp-password",
        "twilio-auth-token": "twilio-token",
    },
    "taskevents-kafka-user": {"username": "taskevents", "password": "kafka-password"},
    "taskevents-kafka-ca": {
        "ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    },
    "taskevents-postgres-ca": {
        "ca.crt": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    },
    "taskevents-dapr-app-token": {"token": "app-token-from-the-operator"},
    "taskevents-dapr-api-token": {"token": "api-token-from-the-operator"},
}


# --- releases ------------------------------------------------------------------------------


def secret_manifest(namespace: str, name: str, data: dict[str, str]) -> Doc:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace}, "stringData": data}  # fmt: skip


def prepare(lab: Lab, namespace: str, values: str) -> None:
    """What the cluster needs before `helm install`, as on Minikube or a real cluster."""
    lab.kubectl("create", "namespace", namespace)
    if values == "minikube":
        # Stand-ins for Minikube's storage provisioner: one volume per StatefulSet claim.
        for claim, size in (
            ("data-taskevents-postgresql-0", "1Gi"),
            ("data-taskevents-redpanda-0", "2Gi"),
        ):
            volume = {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": f"{namespace}-{claim}"},
                "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                         "persistentVolumeReclaimPolicy": "Retain",
                         "hostPath": {"path": f"/tmp/{namespace}-{claim}"},
                         "claimRef": {"namespace": namespace, "name": claim}},
            }  # fmt: skip
            lab.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(volume))
    else:
        for name, data in PRODUCTION_SECRETS.items():
            lab.kubectl(
                "apply", "-f", "-", stdin=yaml.safe_dump(secret_manifest(namespace, name, data))
            )


def settled(lab: Lab, namespace: str) -> bool:
    """Every service at its autoscaler's minimum at least, all of its pods Running and Ready."""
    for app_id in APP_IDS:
        deployment = lab.get("deployment", app_id, namespace)
        wanted = deployment["spec"]["replicas"]
        minimum = lab.get("hpa", app_id, namespace)["spec"]["minReplicas"]
        status = deployment["status"]
        counts = (
            status.get("replicas"),
            status.get("updatedReplicas"),
            status.get("readyReplicas"),
        )
        pods = service_pods(lab, namespace, app_id)
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        if wanted < minimum or counts != (wanted,) * 3 or not len(running) == len(pods) == wanted:
            return False
    return True


def install(lab: Lab, namespace: str, values: str, *extra: str) -> None:
    lab.helm("install", RELEASE, str(CHART), "-n", namespace, "-f", str(VALUES[values]),
             "--wait", "--timeout", "4m", *extra)  # fmt: skip
    wait_for(lambda: settled(lab, namespace), f"the services in {namespace} to settle")


def remove_namespace(lab: Lab, namespace: str) -> None:
    # Not waited for: every release has a namespace of its own.
    lab.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false")
    for volume in lab.items("pv", ""):
        if volume["spec"].get("claimRef", {}).get("namespace") == namespace:
            lab.kubectl("delete", "pv", volume["metadata"]["name"], "--wait=false")


@pytest.fixture(scope="module", params=sorted(VALUES))
def release(request: pytest.FixtureRequest, lab: Lab) -> Iterator[tuple[str, str]]:
    values: str = request.param
    namespace = f"te-{values}"
    prepare(lab, namespace, values)
    try:
        install(lab, namespace, values)
        yield namespace, values
    finally:
        remove_namespace(lab, namespace)


def manifest(lab: Lab, namespace: str, what: str = "manifest") -> list[Doc]:
    text = lab.helm("get", what, RELEASE, "-n", namespace)
    return [d for d in yaml.safe_load_all(text) if d]


def resource(document: Doc) -> str:
    """kind.version.group, as kubectl names one exact API version."""
    group, _, version = document["apiVersion"].rpartition("/")
    return (
        f"{document['kind'].lower()}.{version}.{group}" if group else f"{document['kind'].lower()}"
    )


def service_pods(lab: Lab, namespace: str, app_id: str) -> list[Doc]:
    pods = lab.items("pods", namespace, "-l", f"app.kubernetes.io/name={app_id}")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


# --- install -------------------------------------------------------------------------------


def test_every_object_of_the_release_is_admitted(lab: Lab, release: tuple[str, str]) -> None:
    namespace, values = release
    documents = manifest(lab, namespace)
    kinds = {d["kind"] for d in documents}
    expected = {"Deployment", "Service", "Component", "Subscription", "Configuration", "Resiliency",
                "NetworkPolicy", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Ingress",
                "ServiceAccount"}  # fmt: skip
    if values == "minikube":  # the in-chart broker, database and development Secrets
        expected |= {"StatefulSet", "Secret"}
    assert expected <= kinds
    for document in documents:
        name = document["metadata"]["name"]
        stored = lab.get(resource(document), name, namespace)
        assert stored["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", name
        assert stored["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE


def daprd_flags(args: list[str]) -> dict[str, str]:
    """`--flag value`, `--flag=value` and bare `--flag` (-> "true") of daprd's command line."""
    flags: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        assert arg.startswith("--") or arg == "/daprd", f"unexpected argument {arg!r} in {args}"
        if "=" in arg:
            key, _, value = arg.partition("=")
            flags[key] = value
        elif arg.startswith("--") and (i + 1 == len(args) or args[i + 1].startswith("--")):
            flags[arg] = "true"
        elif arg.startswith("--"):
            flags[arg] = args[i + 1]
            i += 1
        i += 1
    return flags


def test_every_service_pod_runs_an_injected_daprd_as_its_annotations_say(
    lab: Lab, release: tuple[str, str]
) -> None:
    namespace, _ = release
    for app_id in APP_IDS:
        deployment = lab.get("deployment", app_id, namespace)
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        pods = service_pods(lab, namespace, app_id)
        assert pods, f"no pods of {app_id}"
        for pod in pods:
            assert pod["status"]["phase"] == "Running"
            assert pod["metadata"]["labels"].get("dapr.io/sidecar-injected") == "true"
            containers = {c["name"]: c for c in pod["spec"]["containers"]}
            assert list(containers) == [app_id, "daprd"]
            daprd = containers["daprd"]
            assert daprd["image"] == DAPRD_IMAGE
            flags = daprd_flags([*daprd.get("command", []), *daprd["args"]])
            assert flags["--mode"] == "kubernetes"
            assert flags["--app-id"] == annotations["dapr.io/app-id"] == app_id
            assert flags["--app-port"] == annotations["dapr.io/app-port"]
            assert flags["--app-protocol"] == annotations["dapr.io/app-protocol"]
            assert flags["--config"] == annotations["dapr.io/config"]
            assert flags["--log-level"] == annotations["dapr.io/log-level"]
            assert ("--log-as-json" in flags) == (annotations["dapr.io/log-as-json"] == "true")
            assert flags["--enable-metrics"] == "true"
            assert flags["--metrics-port"] == annotations["dapr.io/metrics-port"]
            assert flags["--enable-app-health-check"] == "true"
            assert flags["--app-health-check-path"] == annotations["dapr.io/app-health-check-path"]
            assert (
                flags["--app-health-probe-interval"]
                == annotations["dapr.io/app-health-probe-interval"]
            )
            assert (
                flags["--dapr-graceful-shutdown-seconds"]
                == annotations["dapr.io/graceful-shutdown-seconds"]
            )
            assert flags["--enable-mtls"] == "true"
            assert flags["--sentry-address"] == "dapr-sentry.dapr-system.svc.cluster.local:443"
            metrics = [p for p in daprd["ports"] if p["name"] == "dapr-metrics"]
            assert [p["containerPort"] for p in metrics] == [
                int(annotations["dapr.io/metrics-port"])
            ]
            resources = daprd["resources"]
            assert resources["requests"] == {
                "cpu": annotations["dapr.io/sidecar-cpu-request"],
                "memory": annotations["dapr.io/sidecar-memory-request"],
            }
            assert resources["limits"] == {
                "cpu": annotations["dapr.io/sidecar-cpu-limit"],
                "memory": annotations["dapr.io/sidecar-memory-limit"],
            }
            assert daprd["securityContext"]["seccompProfile"] == {
                "type": annotations["dapr.io/sidecar-seccomp-profile-type"]
            }
            # The tokens come from the Secrets the annotations name, which exist with a token.
            env = {e["name"]: e for e in daprd["env"]}
            for variable, annotation in (
                ("DAPR_API_TOKEN", "dapr.io/api-token-secret"),
                ("APP_API_TOKEN", "dapr.io/app-token-secret"),
            ):
                reference = env[variable]["valueFrom"]["secretKeyRef"]
                assert reference == {"name": annotations[annotation], "key": "token"}
                secret = lab.get("secret", reference["name"], namespace)
                assert base64.b64decode(secret["data"]["token"])
            # The app container reads the same Secrets as its sidecar.
            app_env = {e["name"]: e for e in containers[app_id]["env"]}
            assert app_env["DAPR_API_TOKEN"]["valueFrom"] == env["DAPR_API_TOKEN"]["valueFrom"]
            assert app_env["APP_API_TOKEN"]["valueFrom"] == env["APP_API_TOKEN"]["valueFrom"]
            # Sentry's identity token for the sidecar, as in a real cluster.
            assert "dapr-identity-token" in {v["name"] for v in pod["spec"]["volumes"]}


def operator_service(lab: Lab, namespace: str, app_id: str) -> Doc | None:
    if not lab.exists("service", f"{app_id}-dapr", namespace):
        return None
    return lab.get("service", f"{app_id}-dapr", namespace)


def test_prometheus_finds_the_metrics_of_every_app_and_its_sidecar(
    lab: Lab, release: tuple[str, str]
) -> None:
    """A pod carries one set of prometheus.io annotations: the chart's name the app's
    /metrics; the sidecar's are on the `<app-id>-dapr` Service the Dapr operator makes, whose
    endpoints Prometheus' service-endpoints discovery scrapes."""
    namespace, _ = release
    for app_id in APP_IDS:
        deployment = lab.get("deployment", app_id, namespace)
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == annotations["dapr.io/app-port"]
        assert annotations["prometheus.io/path"] == "/metrics"
        sidecar = wait_for(
            partial(operator_service, lab, namespace, app_id),
            f"the Dapr operator's Service {app_id}-dapr",
        )
        assert sidecar["metadata"]["ownerReferences"][0]["name"] == app_id
        metrics_port = annotations["dapr.io/metrics-port"]
        assert sidecar["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert sidecar["metadata"]["annotations"]["prometheus.io/port"] == metrics_port
        ports = {p["name"]: p["targetPort"] for p in sidecar["spec"]["ports"]}
        assert ports["dapr-metrics"] == int(metrics_port)


def contained(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where `actual` lacks or differs from `expected` (extra fields in `actual` are fine)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: {actual!r} is not an object"]
        problems = []
        for key, value in expected.items():
            if key not in actual:
                problems.append(f"{path}.{key}: pruned or missing")
            else:
                problems += contained(value, actual[key], f"{path}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {actual!r} != {expected!r}"]
        return [p for i, (e, a) in enumerate(zip(expected, actual, strict=True))
                for p in contained(e, a, f"{path}[{i}]")]  # fmt: skip
    return [] if expected == actual else [f"{path}: {actual!r} != {expected!r}"]


def test_dapr_resources_are_stored_by_the_real_crds_without_losing_a_field(
    lab: Lab, release: tuple[str, str]
) -> None:
    namespace, _ = release
    dapr = [d for d in manifest(lab, namespace) if d["apiVersion"].startswith("dapr.io/")]
    assert {d["kind"] for d in dapr} == {"Component", "Configuration", "Resiliency", "Subscription"}
    for document in dapr:
        stored = lab.get(resource(document), document["metadata"]["name"], namespace)
        body = {k: v for k, v in document.items() if k not in ("metadata", "apiVersion")}
        problems = contained(body, stored)
        assert not problems, f"{document['kind']}/{document['metadata']['name']}: {problems}"
    # The same Subscriptions read as v1alpha1: converted by the Dapr operator's webhook.
    for document in dapr:
        if document["kind"] == "Subscription":
            old = lab.get("subscriptions.v1alpha1.dapr.io", document["metadata"]["name"], namespace)
            assert old["apiVersion"] == "dapr.io/v1alpha1"
            assert old["spec"]["topic"] == document["spec"]["topic"]
            assert old["spec"]["route"] == document["spec"]["routes"]["default"]


def test_hook_jobs_ran_to_completion(lab: Lab, release: tuple[str, str]) -> None:
    namespace, values = release
    hooks = [d for d in manifest(lab, namespace, "hooks") if d["kind"] == "Job"]
    expected = {f"{RELEASE}-audit-migrate"} | (
        {f"{RELEASE}-redpanda-topics"} if values == "minikube" else set()
    )
    assert {j["metadata"]["name"] for j in hooks} == expected
    events = lab.items("events", namespace, "--field-selector", "involvedObject.kind=Job")
    completed = {e["involvedObject"]["name"] for e in events if e["reason"] == "Completed"}
    assert expected <= completed, f"completed: {completed}"
    for job in expected:  # hook-succeeded: Helm deleted each Job once it completed
        assert not lab.exists("job", job, namespace)


# --- upgrade, rollback, uninstall ----------------------------------------------------------


def pod_uids(lab: Lab, namespace: str) -> dict[str, set[str]]:
    return {app_id: {p["metadata"]["uid"] for p in service_pods(lab, namespace, app_id)}
            for app_id in APP_IDS}  # fmt: skip


def wait_for_rollout(
    lab: Lab, namespace: str, before: dict[str, set[str]], rolled: set[str]
) -> None:
    """The pods of `rolled` are all new (none of `before`), the others are the same pods."""

    def settled() -> dict[str, set[str]] | None:
        now = pod_uids(lab, namespace)
        for app_id in APP_IDS:
            if not now[app_id]:
                return None
            if app_id in rolled and now[app_id] & before[app_id]:
                return None
        return now

    now = wait_for(settled, f"new pods of {sorted(rolled)}", timeout=120)
    for app_id in set(APP_IDS) - rolled:
        assert now[app_id] == before[app_id], f"{app_id} restarted, though nothing it uses changed"


def upgrade(lab: Lab, namespace: str, chart: Path, *args: str) -> None:
    lab.helm("upgrade", RELEASE, str(chart), "-n", namespace, "--reuse-values", "--wait",
             "--timeout", "3m", *args)  # fmt: skip


def secret_value(lab: Lab, namespace: str, name: str, key: str) -> str:
    return base64.b64decode(lab.get("secret", name, namespace)["data"][key]).decode()


def namespaced_objects(lab: Lab, namespace: str) -> list[str]:
    kinds = lab.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    listed = lab.get(",".join(kinds), None, namespace)
    return sorted(f"{i['kind']}/{i['metadata']['name']}" for i in listed["items"])


# What every namespace holds without any release.
NAMESPACE_DEFAULTS = ["ConfigMap/kube-root-ca.crt", "ServiceAccount/default"]


def assert_uninstall_leaves_nothing(lab: Lab, namespace: str, *kept: str) -> None:
    """After `helm uninstall`: only the namespace's defaults and what `kept` names (objects
    made outside the release) are left."""
    lab.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "3m")
    left = sorted([*NAMESPACE_DEFAULTS, *kept])
    wait_for(lambda: namespaced_objects(lab, namespace) == left or None,
             f"only {left} to be left", timeout=120)  # fmt: skip
    assert not lab.helm("list", "-n", namespace, "-q").strip()


def configured_sampling_rate(values: str) -> str:
    document = yaml.safe_load(VALUES[values].read_text())
    return str(document.get("dapr", {}).get("tracing", {}).get("samplingRate", "1"))


# Last in the module: it uninstalls the release the tests above share.
def test_upgrades_restart_exactly_the_pods_that_read_what_changed_then_rollback_and_uninstall(
    lab: Lab, release: tuple[str, str], tmp_path: Path
) -> None:
    namespace, values = release
    # The Configuration every sidecar loads at start: every service restarts.
    before = pod_uids(lab, namespace)
    upgrade(lab, namespace, CHART, "--set", "dapr.tracing.samplingRate=0.5")
    configuration = lab.get("configuration", "taskevents", namespace)
    assert configuration["spec"]["tracing"]["samplingRate"] == "0.5"
    wait_for_rollout(lab, namespace, before, set(APP_IDS))

    # A Subscription scoped to the audit log only: only its pods restart.
    chart = tmp_path / "helm-chart"
    shutil.copytree(CHART, chart)
    subscriptions = chart / "templates" / "dapr" / "subscriptions-audit-log-service.yaml"
    text = subscriptions.read_text()
    assert "maxMessagesCount: 1000" in text
    subscriptions.write_text(text.replace("maxMessagesCount: 1000", "maxMessagesCount: 500"))
    before = pod_uids(lab, namespace)
    upgrade(lab, namespace, chart)
    stored = lab.get("subscription", "task-events-audit-log", namespace)
    assert stored["spec"]["bulkSubscribe"]["maxMessagesCount"] == 500
    wait_for_rollout(lab, namespace, before, {"audit-log-service"})

    # A Secret every pod reads: every service restarts. With the chart's own Secrets the new
    # value comes through values; in production an operator rotates the existing Secret and
    # runs `helm upgrade` with the same values.
    before = pod_uids(lab, namespace)
    if values == "minikube":
        upgrade(lab, namespace, CHART, "--set", "dapr.appToken=a-rotated-app-token")
        rotated = ("taskevents-dapr-app-token", "a-rotated-app-token")
    else:
        rotated = ("taskevents-dapr-api-token", "a-rotated-api-token")
        secret = secret_manifest(namespace, rotated[0], {"token": rotated[1]})
        lab.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(secret))
        upgrade(lab, namespace, CHART)
    assert secret_value(lab, namespace, rotated[0], "token") == rotated[1]
    wait_for_rollout(lab, namespace, before, set(APP_IDS))

    # An upgrade that changes nothing restarts nothing.
    before = pod_uids(lab, namespace)
    upgrade(lab, namespace, CHART)
    wait_for_rollout(lab, namespace, before, set())

    # Back to the first revision: its Configuration (and the chart's first Secrets) again, and
    # every pod restarts.
    before = pod_uids(lab, namespace)
    lab.helm("rollback", RELEASE, "1", "-n", namespace, "--wait", "--timeout", "3m")
    configuration = lab.get("configuration", "taskevents", namespace)
    assert configuration["spec"]["tracing"]["samplingRate"] == configured_sampling_rate(values)
    if values == "minikube":
        first = secret_value(lab, namespace, rotated[0], "token")
        assert first == "minikube-development-app-token"
    wait_for_rollout(lab, namespace, before, set(APP_IDS))

    # Nothing of the release is left; what the operator made outside it stays.
    kept = [f"Secret/{name}" for name in PRODUCTION_SECRETS] if values == "production" else []
    assert_uninstall_leaves_nothing(lab, namespace, *kept)
