"""Events through the pods: the chart installed on the lab's real node (values-minikube.yaml
plus values-lab-node.yaml), every service pod with its injected daprd (the project's daprd
as ghcr.io/dapr/daprd, mTLS certificates from the lab's Sentry), Kafka, Postgres and the
SMTP sink on the lab's address (`cluster.sh services-up`), Services through kube-proxy and
names through CoreDNS. One event published through a sidecar (a port-forward to
recurring-task-service's daprd) lands once in the audit log, sends a mail, reaches a
WebSocket client connected through a port-forward, and its recurrence fires; then a stream
survives the audit log's pod being killed in the middle of it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kubernetes.conftest import APP_IDS, CHART, DAPRD_IMAGE, RELEASE, Doc, Lab, wait_for
from tests.support.authorization import token
from tests.support.mailbox import mails_to
from tests.support.stack import ROOT, STATE

NAMESPACE = "flow"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
CLI = str(ROOT / ".venv" / "bin" / "taskevents")
API_TOKEN = "minikube-development-api-token"  # values-minikube.yaml's dapr.apiToken
MAIL_DIR = STATE / "k8s" / "run" / "services" / "mail"
# GET with headers from inside the lab's namespace, where the port-forwards listen.
FETCH = (
    "import json, sys, urllib.request;"
    "request = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]));"
    "print(urllib.request.urlopen(request, timeout=10).read().decode())"
)
# A WebSocket client inside the lab's namespace: every frame it gets, one JSON line.
WS_CLIENT = (
    "import asyncio, sys, websockets\n"
    "async def main():\n"
    "    async with websockets.connect(sys.argv[1]) as client:\n"
    "        async for message in client:\n"
    "            print(message, flush=True)\n"
    "asyncio.run(main())\n"
)


class PortForward:
    """`kubectl port-forward` inside the lab's namespace, until closed."""

    def __init__(self, lab: Lab, target: str, *ports: str) -> None:
        self.process = lab.popen("kubectl", "-n", NAMESPACE, "port-forward", target, *ports)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("Forwarding from"), (line, self.close())

    def close(self) -> str:
        self.process.terminate()
        _, errors = self.process.communicate(timeout=30)
        return errors


class Frames:
    """The WebSocket client's frames (one JSON line each), read by a thread so that a
    test waits for them with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.frames: list[Doc] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.frames.append(json.loads(line))

    def events(self) -> list[Doc]:
        return [f["event"] for f in self.frames if f["kind"] == "event"]


@pytest.fixture(scope="module")
def release(real_node: Lab) -> Iterator[Lab]:
    lab = real_node
    lab.helm(
        "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
        "-f", str(CHART / "values-minikube.yaml"),
        "-f", str(ROOT / "tests" / "kubernetes" / "values-lab-node.yaml"),
        "--wait", "--timeout", "6m", timeout=420,
    )  # fmt: skip
    yield lab
    lab.helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "2m")
    lab.kubectl("delete", "namespace", NAMESPACE, "--wait=false")


def service_pods(lab: Lab, app_id: str) -> list[Doc]:
    return lab.items("pods", NAMESPACE, "-l", f"app.kubernetes.io/name={app_id}")


def ready(pod: Doc) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["metadata"].get("deletionTimestamp") is None and conditions.get("Ready") == "True"


def fetch(lab: Lab, url: str, user_id: str) -> Any:
    headers = json.dumps({"Authorization": f"Bearer {token(user_id)}"})
    return json.loads(lab.run(PYTHON, "-c", FETCH, url, headers))


def audit_rows(lab: Lab, port: int, **query: str) -> list[Doc]:
    user_id = query["user_id"]
    params = "&".join(f"{k}={v}" for k, v in query.items())
    rows: list[Doc] = fetch(
        lab, f"http://127.0.0.1:{port}/audit/events?{params}&limit=500", user_id
    )["items"]
    return rows


def publish(lab: Lab, *args: str) -> str:
    env = {**os.environ, "DAPR_API_TOKEN": API_TOKEN}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "k8s" / "cluster.sh"), "exec", CLI,
         "--dapr-http-port", "3500", "--dapr-grpc-port", "50001", *args],
        env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_every_service_pod_runs_on_the_real_node_with_its_sidecar(release: Lab) -> None:
    for app_id in APP_IDS:
        (pod,) = service_pods(release, app_id)
        assert pod["spec"]["nodeName"] == "lab-node"
        assert ready(pod), pod["status"]
        containers = {c["name"]: c for c in pod["spec"]["containers"]}
        assert set(containers) == {app_id, "daprd"}
        assert containers["daprd"]["image"] == DAPRD_IMAGE
        statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
        assert statuses["daprd"]["ready"]
        assert statuses[app_id]["ready"]
        assert statuses["daprd"]["restartCount"] == 0
        assert "--enable-mtls" in containers["daprd"]["args"]
        logs = release.kubectl("-n", NAMESPACE, "logs", pod["metadata"]["name"], "-c", "daprd")
        # Its workload certificate came from the lab's Sentry.
        assert "Security is initialized successfully" in logs, logs[-3000:]
        assert "Starting workload identity expiry watcher" in logs, logs[-3000:]
        assert "dapr initialized. Status: Running" in logs, logs[-3000:]


def test_one_event_flows_through_the_pods(release: Lab) -> None:
    user_id = f"k8s-{uuid.uuid4().hex[:8]}"
    task_id = f"task-{uuid.uuid4().hex[:8]}"
    email = f"{user_id}@example.com"
    sidecar = PortForward(release, "deploy/recurring-task-service", "3500:3500", "50001:50001")
    audit = PortForward(release, "svc/audit-log-service", "8003:8003")
    live = PortForward(release, "svc/websocket-service", "8004:8004")
    client = release.popen(
        PYTHON, "-c", WS_CLIENT, f"ws://127.0.0.1:8004/ws?token={token(user_id)}"
    )
    frames = Frames(client)
    try:
        wait_for(lambda: frames.frames, "the WebSocket's welcome", timeout=60)
        assert frames.frames[0]["kind"] == "welcome"
        payload = {
            "title": "Through the pods",
            "user_email": email,
            "recurrence": {"interval_seconds": 2},
        }
        event_id = publish(
            release, "publish", "task.created", "--task-id", task_id, "--user-id", user_id,
            "--payload", json.dumps(payload),
        ).strip()  # fmt: skip

        # The WebSocket client, connected through a port-forward, gets it, once.
        def pushed() -> list[str] | None:
            ids = [e["event_id"] for e in frames.events()]
            return ids if event_id in ids else None

        assert wait_for(pushed, "the event on the WebSocket", timeout=60).count(event_id) == 1

        # The audit log stores it once, and the recurrence fires (recurring-task-service
        # publishes task.recurring.triggered through its sidecar).
        def stored() -> list[Doc] | None:
            rows = audit_rows(release, 8003, user_id=user_id, task_id=task_id)
            types = [r["type"] for r in rows]
            return rows if "task.recurring.triggered" in types else None

        rows = wait_for(stored, "the event and a fired recurrence in the audit log", timeout=120)
        assert [r["event_id"] for r in rows if r["type"] == "task.created"] == [event_id]

        # notification-service mailed it through the SMTP sink.
        def mailed() -> list[str] | None:
            ids = [m.header("X-Taskevents-Event-Id") or "" for m in mails_to(MAIL_DIR, email)]
            return ids if event_id in ids else None

        assert wait_for(mailed, "the mail for the event", timeout=120).count(event_id) == 1
    finally:
        client.terminate()
        client.communicate(timeout=30)
        for forward in (live, audit, sidecar):
            forward.close()


def test_a_pod_killed_mid_stream_is_replaced_and_nothing_is_lost(release: Lab) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    (victim,) = service_pods(release, "audit-log-service")
    sidecar = PortForward(release, "deploy/recurring-task-service", "3500:3500", "50001:50001")
    try:
        env = {**os.environ, "DAPR_API_TOKEN": API_TOKEN}
        demo = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "k8s" / "cluster.sh"), "exec", CLI,
             "--dapr-http-port", "3500", "--dapr-grpc-port", "50001",
             "demo", "--users", "2", "--rate", "8", "--duration", "12", "--user-prefix", prefix],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert demo.stderr is not None
        # Mid-stream: once the demo reports its first events (a progress line ending in
        # a carriage return), the audit log's pod goes.
        progress = ""
        while "published" not in progress:
            character = demo.stderr.read(1)
            assert character, f"the demo ended before publishing: {progress}"
            progress += character
        # One second's grace: the kubelet then kills the containers, events in flight too.
        release.kubectl(
            "-n", NAMESPACE, "delete", "pod", victim["metadata"]["name"],
            "--grace-period=1", "--wait=false",
        )  # fmt: skip
        stdout, stderr = demo.communicate(timeout=300)
        assert demo.returncode == 0, stderr
    finally:
        sidecar.close()
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["failed"] == 0
    assert summary["published"] > 0

    def replaced() -> Doc | None:
        pods = [p for p in service_pods(release, "audit-log-service") if ready(p)]
        return pods[0] if pods and pods[0]["metadata"]["uid"] != victim["metadata"]["uid"] else None

    replacement = wait_for(replaced, "a ready replacement of the audit log's pod", timeout=180)
    assert replacement["spec"]["nodeName"] == "lab-node"
    audit = PortForward(release, "svc/audit-log-service", "8003:8003")
    try:
        users = [f"{prefix}-{i}" for i in range(2)]

        def all_stored() -> list[Doc] | None:
            rows = [r for u in users for r in audit_rows(release, 8003, user_id=u)]
            demo_rows = [r for r in rows if r["type"] != "task.recurring.triggered"]
            return demo_rows if len(demo_rows) >= summary["published"] else None

        rows = wait_for(all_stored, "every event of the stream in the audit log", timeout=180)
    finally:
        audit.close()
    assert len(rows) == summary["published"]
    assert len({r["event_id"] for r in rows}) == len(rows)
