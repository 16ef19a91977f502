"""The whole system on the suite's own infrastructure: all four services, two replicas each
(notification, audit and recurring share a consumer group per service; every websocket
replica has a group of its own, as DESIGN.md says), each beside its own daprd, plus the
publishing sidecar of the task app. The audit log runs under an app-id of its own so that
the websocket replicas' resumes (service invocation by app-id) reach this audit log and
never another session's."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taskevents_cli.devrun import AppSpec, ManagedProcess, ProcessDiedError, start_app
from tests.support.cluster import (
    COMPONENTS,
    KAFKA_COMPONENTS,
    VENV_BIN,
    Service,
    daprd_env,
    service_spec,
)
from tests.support.live_stream import audit_subscriptions
from tests.support.stack import RUN_ID, Stack

AUDIT_APP_ID = f"faults-audit-{RUN_ID}"
ROLES = ("audit", "notify", "recurring", "ws")
APP_IDS = {
    "audit": AUDIT_APP_ID,
    "notify": "notification-service",
    "recurring": "recurring-task-service",
    "ws": "websocket-service",
}
# Replica numbers start high so that resources and logs never meet another harness's.
FIRST_REPLICA = 80
START_ATTEMPTS = 3
PORT_TAKEN = ("address already in use", "could not listen on any endpoint")


def production_offsets(resources: Path) -> None:
    """The harness renders the Kafka components with the newest offset (a test session on
    the shared broker must not replay its history); the suite's broker is its own and has
    none, so its consumers start where production's do: a group that never committed a
    partition (one that joins during a fault) must not skip what is already there."""
    for name in KAFKA_COMPONENTS:
        path = resources / f"{name}.yaml"
        if not path.exists():
            continue
        original = yaml.safe_load((COMPONENTS / f"{name}.yaml").read_text())
        wanted = {m["name"]: m.get("value") for m in original["spec"]["metadata"]}["initialOffset"]
        document = yaml.safe_load(path.read_text())
        for entry in document["spec"]["metadata"]:
            if entry["name"] == "initialOffset":
                entry["value"] = wanted
        path.write_text(yaml.safe_dump(document, sort_keys=False))


@dataclass
class Replica:
    role: str
    number: int
    service: Service

    @property
    def name(self) -> str:
        return f"{self.role}-{self.number - FIRST_REPLICA}"

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def app(self) -> ManagedProcess:
        assert self.service.app.app is not None
        return self.service.app.app

    @property
    def sidecar(self) -> ManagedProcess:
        return self.service.app.sidecar

    @property
    def group(self) -> str:
        return self.service.consumer_groups[0]


@dataclass
class System:
    stack: Stack
    sms_url: str
    replicas: list[Replica] = field(default_factory=list)
    publisher: Replica | None = None

    def group_of(self, role: str, number: int) -> str:
        if role == "ws":
            return f"websocket-service-faults-{RUN_ID}-{number}"
        return f"{APP_IDS[role]}-faults-{RUN_ID}"

    def env_of(self, role: str) -> dict[str, str]:
        if role == "notify":
            return {
                "NOTIFY_SMS_PROVIDER": "webhook",
                "NOTIFY_SMS_WEBHOOK_URL": self.sms_url,
                "NOTIFY_RATE_LIMIT_COUNT": "0",
            }
        if role == "ws":
            return {"WEBSOCKET_AUDIT_APP_ID": AUDIT_APP_ID}
        if role == "recurring":
            return {"RECURRING_POLL_SECONDS": "0.5"}
        return {}

    def start(self, role: str, number: int) -> Replica:
        app_id = APP_IDS[role]
        extra: list[dict[str, Any]] = audit_subscriptions(app_id) if role == "audit" else []

        def spec() -> tuple[AppSpec, str]:
            return service_spec(
                self.stack,
                app_id,
                replica=number,
                env=self.env_of(role),
                command=[str(VENV_BIN / "audit-log-service")] if role == "audit" else None,
                extra_resources=extra,
                role="audit-log-service" if role == "audit" else None,
                consumer_id=self.group_of(role, number),
            )

        replica = Replica(role, number, self._start(spec, f"{role}-{number}"))
        self.replicas.append(replica)
        return replica

    def start_publisher(self) -> Replica:
        def spec() -> tuple[AppSpec, str]:
            return service_spec(self.stack, "taskevents-cli", with_app=False, replica=FIRST_REPLICA)

        self.publisher = Replica("publisher", FIRST_REPLICA, self._start(spec, "publisher"))
        return self.publisher

    def _start(self, spec: Callable[[], tuple[AppSpec, str]], name: str) -> Service:
        """Start an app beside its daprd on free ports, again on other ports when one picked
        a moment ago was taken meanwhile (a busy machine)."""
        for attempt in range(1, START_ATTEMPTS + 1):
            app_spec, group = spec()
            for resources in app_spec.resources_paths:
                production_offsets(resources)
            app = start_app(
                app_spec,
                daprd=self.stack.daprd,
                log_dir=self.stack.log_dir / name,
                daprd_env=daprd_env(self.stack),
            )
            try:
                app.wait_ready(timeout=120)
                return Service(app, [group])
            except ProcessDiedError as error:
                app.stop()
                if not any(m in str(error) for m in PORT_TAKEN) or attempt == START_ATTEMPTS:
                    raise
            except BaseException:
                app.stop()
                raise
        raise AssertionError("unreachable")

    def of(self, role: str) -> list[Replica]:
        return [r for r in self.replicas if r.role == role]

    def remove(self, replica: Replica) -> None:
        replica.service.app.stop(signal.SIGTERM)
        self.replicas.remove(replica)

    @property
    def groups(self) -> list[str]:
        return sorted({r.group for r in self.replicas})

    def stop(self) -> None:
        for replica in reversed(self.replicas):
            replica.service.app.stop()
        if self.publisher is not None:
            self.publisher.service.app.stop()
