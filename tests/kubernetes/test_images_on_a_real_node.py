"""The services' images, built by buildah from the one Dockerfile (scripts/k8s/images.sh),
on a real node of the lab cluster (kubelet, containerd, runc, the CNI bridge:
`scripts/k8s/cluster.sh node-up`), with the pod and container settings the chart gives them:
user 10001, read-only root file system, no capabilities, RuntimeDefault seccomp, /tmp as an
emptyDir, the startup probe on /health. Without their sidecar, broker and database: what is
checked is that each image holds a working install that starts under those constraints."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.kubernetes.conftest import CHART, Doc, Lab, wait_for

NAMESPACE = "images"
# Settings that stand in for the chart's Secrets and the missing dependencies.
DEVELOPMENT_ENV = {
    "TASKEVENTS_ENV": "development",
    "DATABASE_URL": "postgresql://taskevents:none@127.0.0.1:1/taskevents",
}
# GET a URL from inside the lab's network namespace, where the pods' addresses are.
FETCH = (
    "import sys, urllib.request;"
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)
# Every service starts without its database (unready, migrating once it answers), so each
# answers the kubelet's startup probe on /health.
SERVES_HEALTH_WITHOUT_DATABASE = {
    "websocket-service",
    "notification-service",
    "audit-log-service",
    "recurring-task-service",
}


@pytest.fixture(scope="module")
def node(real_node: Lab) -> Iterator[Lab]:
    real_node.kubectl("create", "namespace", NAMESPACE)
    yield real_node
    real_node.kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def chart_deployment(lab: Lab, app_id: str) -> Doc:
    text = subprocess.run(
        [lab.helm_binary, "template", "taskevents", str(CHART),
         "-f", str(CHART / "values-minikube.yaml"), "--show-only", "templates/deployments.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    deployments: dict[str, Doc] = {d["metadata"]["name"]: d for d in yaml.safe_load_all(text) if d}
    return deployments[app_id]


def pod_like_the_chart(deployment: Doc, app_id: str) -> Doc:
    template = deployment["spec"]["template"]["spec"]
    (container,) = template["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e} | DEVELOPMENT_ENV
    app: dict[str, Any] = {
        key: container[key]
        for key in ("name", "image", "imagePullPolicy", "ports", "securityContext", "volumeMounts")
    }
    app["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    if app_id in SERVES_HEALTH_WITHOUT_DATABASE:
        app["startupProbe"] = container["startupProbe"]
        restart = "Always"
    else:
        package = app_id.replace("-", "_")
        app["command"] = ["python", "-c", f"import {package}.app, os; print(os.getuid())"]
        restart = "Never"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": app_id, "namespace": NAMESPACE},
        "spec": {
            "securityContext": template["securityContext"],
            "containers": [app], "volumes": template["volumes"], "restartPolicy": restart,
            "automountServiceAccountToken": False, "enableServiceLinks": False,
            "nodeSelector": {"taskevents.io/lab-node": "true"},
            "tolerations": [{"key": "taskevents.io/lab-node", "operator": "Exists",
                             "effect": "NoSchedule"}],
        },
    }  # fmt: skip


@pytest.mark.parametrize(
    "app_id",
    ["notification-service", "recurring-task-service", "audit-log-service", "websocket-service"],
)
def test_the_image_runs_on_a_real_node_as_the_chart_runs_it(node: Lab, app_id: str) -> None:
    deployment = chart_deployment(node, app_id)
    pod = pod_like_the_chart(deployment, app_id)
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    node.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pod))

    def status() -> Doc | None:
        stored = node.get("pod", app_id, NAMESPACE)
        statuses = stored["status"].get("containerStatuses") or [{}]
        waiting = statuses[0].get("state", {}).get("waiting", {})
        assert waiting.get("reason") not in ("ErrImageNeverPull", "CrashLoopBackOff"), waiting
        if app_id in SERVES_HEALTH_WITHOUT_DATABASE:
            # Ready only once the kubelet's startup probe got /health from the app.
            ready = {c["type"]: c["status"] for c in stored["status"].get("conditions", [])}
            return stored if ready.get("Ready") == "True" else None
        return stored if stored["status"].get("phase") in ("Succeeded", "Failed") else None

    stored = wait_for(status, f"{app_id} on the lab node", timeout=120)
    assert stored["spec"]["nodeName"] == "lab-node"
    (container,) = stored["status"]["containerStatuses"]
    assert container["restartCount"] == 0
    if app_id in SERVES_HEALTH_WITHOUT_DATABASE:
        port = deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        url = f"http://{stored['status']['podIP']}:{port}/health"
        health = node.run("python3", "-c", FETCH, url)
        assert json.loads(health) == {"service": app_id, "status": "healthy"} | (
            {"connections": 0} if app_id == "websocket-service" else {}
        )
    else:
        assert stored["status"]["phase"] == "Succeeded"
        assert node.kubectl("logs", "-n", NAMESPACE, app_id).strip() == "10001"
