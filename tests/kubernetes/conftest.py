"""The Kubernetes tier: a real API server, controllers, scheduler and Dapr control plane
(scripts/k8s/cluster.sh; kwok plays the node), brought up once per session and always torn
down. Tests drive it with the pinned kubectl and Helm, inside the lab's namespace, and read
back what the API server stored."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tests.support.stack import ROOT
from tests.support.waiting import eventually_sync

CLUSTER = ROOT / "scripts" / "k8s" / "cluster.sh"
CHART = ROOT / "helm-chart"
RELEASE = "taskevents"
APP_IDS = (
    "notification-service",
    "recurring-task-service",
    "audit-log-service",
    "websocket-service",
)
DAPRD_IMAGE = "ghcr.io/dapr/daprd:1.18.2"  # scripts/k8s/versions.sh
IMAGES = ROOT / "scripts" / "k8s" / "images.sh"
Doc = dict[str, Any]
T = TypeVar("T")


class CommandError(AssertionError):
    pass


@dataclass
class Lab:
    helm_binary: str
    # The real node (images, then `cluster.sh node-up`), started beside the first tests.
    node_up: subprocess.Popen[str] | None = None
    node_up_errors: str = ""

    def run(self, *argv: str, stdin: str | None = None, timeout: float = 300) -> str:
        result = subprocess.run(
            ["bash", str(CLUSTER), "exec", *argv],
            input=stdin, capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if result.returncode != 0:
            raise CommandError(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr}")
        return result.stdout

    def popen(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """A long-running command inside the lab's namespace (a port-forward, a client)."""
        return subprocess.Popen(
            ["bash", str(CLUSTER), "exec", *argv], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self.run("kubectl", *args, stdin=stdin)

    def helm(self, *args: str, timeout: float = 300) -> str:
        return self.run(self.helm_binary, *args, timeout=timeout)

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            *selectors: str) -> Doc:  # fmt: skip
        args = ["get", kind, *([name] if name else []), "-o", "json", *selectors]
        if namespace:
            args += ["-n", namespace]
        document: Doc = json.loads(self.kubectl(*args))
        return document

    def items(self, kind: str, namespace: str, *selectors: str) -> list[Doc]:
        items: list[Doc] = self.get(kind, None, namespace, *selectors)["items"]
        return items

    def exists(self, kind: str, name: str, namespace: str | None) -> bool:
        args = ["get", kind, name, "--ignore-not-found", "-o", "name"]
        if namespace:
            args += ["-n", namespace]
        return bool(self.kubectl(*args).strip())


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    """Poll `probe` until it returns something truthy, with a deadline."""
    return eventually_sync(probe, timeout=timeout, what=what)


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    helm = subprocess.run(
        ["bash", str(ROOT / "scripts" / "helm.sh")], capture_output=True, text=True, check=False
    )
    assert helm.returncode == 0, helm.stderr
    node_up: subprocess.Popen[str] | None = None
    # A cluster left by an interrupted session would carry its releases: start afresh.
    subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, check=False, timeout=300)
    try:
        up = subprocess.run(["bash", str(CLUSTER), "up"], capture_output=True, text=True,
                            check=False, timeout=1800)  # fmt: skip
        assert up.returncode == 0, f"cluster.sh up failed:\n{up.stderr}"
        # The real node takes ~20 s to start (image imports) and is tainted, so the chart's
        # pods never land there, and the broker, database and mail server its pods use
        # ~20 s more: start them now, the `real_node` fixture waits for them.
        node_up = subprocess.Popen(
            ["bash", "-c",
             f"bash {IMAGES} && bash {CLUSTER} node-up && bash {CLUSTER} services-up"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        yield Lab(helm.stdout.strip().splitlines()[-1], node_up)
    finally:
        if node_up is not None and node_up.poll() is None:
            node_up.communicate(timeout=1800)
        down = subprocess.run(["bash", str(CLUSTER), "down"], capture_output=True, text=True,
                              check=False, timeout=300)  # fmt: skip
        assert down.returncode == 0, f"cluster.sh down failed:\n{down.stderr}"


@pytest.fixture(scope="session")
def real_node(lab: Lab) -> Lab:
    """The lab with its real node (kubelet, containerd, kube-proxy, CoreDNS) and the
    broker, database and mail server on the lab's address, which the session started."""
    assert lab.node_up is not None
    if lab.node_up.returncode is None:
        _, lab.node_up_errors = lab.node_up.communicate(timeout=1800)
    assert lab.node_up.returncode == 0, (
        f"images.sh, cluster.sh node-up or services-up failed:\n{lab.node_up_errors}"
    )
    return lab
