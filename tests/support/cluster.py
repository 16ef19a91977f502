"""The four services, each beside a real daprd, started from the same components as
`make run`, with two test-only changes to the Kafka components: a consumer group per test
session (so a running `make run` and earlier sessions don't share partitions with us) and
the newest offset (so a session doesn't replay the topic's history). Every sidecar talks
mTLS with a certificate from the stack's Sentry, under the same configurations (access
control) and topic scopes as `make run`, which the rendered copies extend to the
suite's own app-ids and topics only."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taskevents_cli.devrun import AppSpec, ProcessDiedError, RunningApp, start_app
from tests.support.kafka import DLQ_TOPIC
from tests.support.stack import ROOT, RUN_ID, Stack, free_port

COMPONENTS = ROOT / "dapr-components"
VENV_BIN = Path(sys.executable).parent
SERVICES = {
    "notification-service": "NOTIFY_",
    "recurring-task-service": "RECURRING_",
    "audit-log-service": "AUDIT_",
    "websocket-service": "WEBSOCKET_",
}
KAFKA_COMPONENTS = ("kafka-pubsub", "websocket-pubsub")
TOPIC_SCOPES = ("publishingScopes", "subscriptionScopes")
# Topics of the suite's own, open to every app of the session: test_notification_channels',
# and test_notification_outage's topic with a history (events published before its
# consumer group exists).
NOTIFY_TEST_TOPIC = f"notify-it-{RUN_ID}"
NOTIFY_HISTORY_TOPIC = f"notify-history-{RUN_ID}"
SUITE_TOPICS = (NOTIFY_TEST_TOPIC, NOTIFY_HISTORY_TOPIC)
# What the suite's publisher (the CLI's sidecar) may publish besides task-events: the
# dead-letter topic, standing in for a subscriber that gave up (test_audit_log_service_delivery).
SUITE_PUBLISHES = {"taskevents-cli": [DLQ_TOPIC]}


@dataclass
class Service:
    app: RunningApp
    consumer_groups: list[str] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return self.app.spec.app_id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.app.spec.app_port}"

    @property
    def dapr_http_port(self) -> int:
        return self.app.spec.dapr_http_port

    @property
    def dapr_grpc_port(self) -> int:
        return self.app.spec.dapr_grpc_port

    def check_alive(self) -> None:
        self.app.check_alive()


def render_resources(
    target: Path,
    app_id: str,
    *,
    consumer_id: str,
    role: str | None = None,
    extra: Iterable[dict[str, Any]] = (),
    resiliency_of: str | None = None,
) -> None:
    """Copy the components and subscriptions for one sidecar, with the test consumer group.
    A test-only app-id gets the topic scopes of the app whose `role` it plays, and the
    Resiliency of `resiliency_of` (the role's by default)."""
    target.mkdir(parents=True, exist_ok=True)
    for source in [*COMPONENTS.glob("*.yaml"), *(COMPONENTS / "subscriptions").glob("*.yaml")]:
        documents = [d for d in yaml.safe_load_all(source.read_text()) if d]
        if any(d.get("kind") == "Configuration" for d in documents):
            continue  # passed by --config (configuration_path)
        for document in documents:
            if (
                document.get("kind") == "Component"
                and document["metadata"]["name"] in KAFKA_COMPONENTS
            ):
                metadata = [
                    m
                    for m in document["spec"]["metadata"]
                    if m["name"] not in ("consumerID", "initialOffset")
                ]
                metadata.append({"name": "consumerID", "value": consumer_id})
                metadata.append({"name": "initialOffset", "value": "newest"})
                for entry in metadata:
                    if entry["name"] in TOPIC_SCOPES:
                        entry["value"] = _test_scopes(
                            entry["value"], app_id, role or app_id, entry["name"]
                        )
                document["spec"]["metadata"] = metadata
            if (
                "scopes" in document
                and app_id not in document["scopes"]
                and source.parent == COMPONENTS
                and _joins_resiliency(document, app_id, resiliency_of or role or app_id)
            ):
                document["scopes"].append(app_id)
        (target / source.name).write_text(yaml.safe_dump_all(documents, sort_keys=False))
    for i, document in enumerate(extra):
        (target / f"extra-{i}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def _test_scopes(value: str, app_id: str, role: str, scope: str) -> str:
    """A `publishingScopes`/`subscriptionScopes` value ("app=t1,t2;app2=t3") with `app_id`
    given the topics of `role` when the value does not name it, the suite's topic for every
    app it names, and the suite publisher's extra topics."""
    scopes: dict[str, list[str]] = {}
    for part in filter(None, value.replace(" ", "").split(";")):
        app, _, listed = part.partition("=")
        scopes[app] = listed.split(",")
    if app_id not in scopes and role in scopes:
        scopes[app_id] = list(scopes[role])
    for app, topics in scopes.items():
        added = list(SUITE_TOPICS)
        if scope == "publishingScopes":
            added += SUITE_PUBLISHES.get(app, [])
        topics.extend(t for t in added if t not in topics)
    return ";".join(f"{app}={','.join(topics)}" for app, topics in scopes.items())


def configuration_path(role: str) -> Path:
    """The Configuration (mTLS, access control) of the app `role`: its own when it has one
    (the callee's sidecar applies the policies), the shared one otherwise."""
    own = COMPONENTS / f"configuration-{role}.yaml"
    return own if own.exists() else COMPONENTS / "configuration.yaml"


# An app no Resiliency names (a test-only app) joins this one, the policy of the ordinary
# apps: daprd keeps one policy per component, and with two the last loaded would win.
SHARED_RESILIENCY = "taskevents-resiliency"


def _joins_resiliency(document: dict[str, Any], app_id: str, role: str) -> bool:
    """Whether a scoped document may take in `app_id`: any component; of the Resiliency
    resources the one of its `role` (an app-id standing in for audit-log-service gets the
    audit log's own), else the shared one for an app whose role has none of its own."""
    if document.get("kind") != "Resiliency":
        return True
    if role in document.get("scopes", ()):
        return True
    if document["metadata"]["name"] != SHARED_RESILIENCY:
        return False
    for source in COMPONENTS.glob("*.yaml"):
        for other in yaml.safe_load_all(source.read_text()):
            if (
                other
                and other.get("kind") == "Resiliency"
                and {app_id, role} & set(other.get("scopes", ()))
            ):
                return False
    return True


def service_spec(
    stack: Stack,
    app_id: str,
    *,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    replica: int = 0,
    extra_resources: Iterable[dict[str, Any]] = (),
    with_app: bool = True,
    role: str | None = None,
    consumer_id: str | None = None,
    resiliency_of: str | None = None,
) -> tuple[AppSpec, str]:
    """`role`: the production app a test-only app-id stands in for (its configuration,
    topic scopes and Resiliency); the app-id itself by default. `resiliency_of`: another
    app whose Resiliency it takes instead. `consumer_id`: the consumer group, for replicas
    that share one (a group per app-id and replica by default)."""
    role = role or app_id
    suffix = f"{RUN_ID}-{replica}" if replica else RUN_ID
    consumer_id = consumer_id or f"{app_id}-{suffix}"
    resources = stack.log_dir / "resources" / f"{app_id}-{replica}"
    if resources.exists():
        shutil.rmtree(resources)
    render_resources(
        resources,
        app_id,
        consumer_id=consumer_id,
        role=role,
        extra=extra_resources,
        resiliency_of=resiliency_of,
    )
    app_port = free_port() if with_app else None
    spec = AppSpec(
        app_id=app_id,
        app_dir=ROOT,
        command=(command or [str(VENV_BIN / app_id)]) if with_app else [],
        app_port=app_port,
        dapr_http_port=free_port(),
        dapr_grpc_port=free_port(),
        metrics_port=free_port(),
        resources_paths=[resources],
        config_path=configuration_path(role),
        sentry_address=stack.sentry_address,
        env={
            "TASKEVENTS_ENV": "development",
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": stack.database_url,
            "NOTIFY_SMTP_HOST": stack.smtp_host,
            "NOTIFY_SMTP_PORT": str(stack.smtp_port),
            "RECURRING_POLL_SECONDS": "0.5",
            "APP_API_TOKEN": stack.app_api_token,
            "DAPR_API_TOKEN": stack.dapr_api_token,
            # The e2e demo is a synthetic burst (~30 mails per user in 6 s) that expects one
            # mail per event; the default (10 per 10 min) is for people.
            "NOTIFY_RATE_LIMIT_COUNT": "100",
            # No SMS provider, as outside development by default (test_notification_service).
            "NOTIFY_SMS_PROVIDER": "none",
            # Every app traces into the stack's Jaeger, as in `make run`; spans leave in
            # half a second instead of five, for the trace tests.
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.otlp_endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            **(env or {}),
        },
        log_level="info",
    )
    return spec, consumer_id


def daprd_env(stack: Stack) -> dict[str, str]:
    return {
        "TASKEVENTS_KAFKA_BROKERS": stack.kafka_brokers,
        "TASKEVENTS_DATABASE_URL": stack.database_url,
        "APP_API_TOKEN": stack.app_api_token,
        "DAPR_API_TOKEN": stack.dapr_api_token,
        "DAPR_TRUST_ANCHORS": stack.trust_anchors,
    }


def start_service(stack: Stack, spec: AppSpec, consumer_id: str, *, replica: int = 0) -> Service:
    name = spec.app_id if not replica else f"{spec.app_id}-{replica}"
    app = start_app(
        spec, daprd=stack.daprd, log_dir=stack.log_dir / name, daprd_env=daprd_env(stack)
    )
    try:
        app.wait_ready()
    except BaseException:
        app.stop()
        raise
    return Service(app=app, consumer_groups=[consumer_id])


def refusal_at_start(app: RunningApp, *, timeout: float = 60.0) -> str:
    """For a sidecar (or app) that must refuse to start: wait until it exits, and return
    what it said (the error with the end of its log). Raises if it becomes ready instead."""
    try:
        app.wait_ready(timeout=timeout)
    except ProcessDiedError as error:
        return str(error)
    finally:
        app.stop()
    raise AssertionError(f"{app.spec.app_id} started although it should have refused to")
