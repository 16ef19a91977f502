"""The topic scopes of the Kafka components agree with the subscriptions (a subscriber
must be allowed its topic, and the dead-letter topic that daprd publishes to under its
app-id), and the test harness extends them only for its own app-ids and topics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import SUITE_TOPICS, _test_scopes

COMPONENTS = Path(__file__).resolve().parents[2] / "dapr-components"
PROTECTED = {"task-events", "task-events-dlq"}


def _documents(*patterns: str) -> list[dict[str, Any]]:
    return [
        d
        for pattern in patterns
        for path in sorted(COMPONENTS.glob(pattern))
        for d in yaml.safe_load_all(path.read_text())
        if d
    ]


def _scopes(component: dict[str, Any], name: str) -> dict[str, set[str]]:
    metadata = {m["name"]: m.get("value", "") for m in component["spec"]["metadata"]}
    scopes: dict[str, set[str]] = {}
    for part in filter(None, metadata.get(name, "").split(";")):
        app, _, topics = part.partition("=")
        scopes[app] = set(topics.split(","))
    return scopes


def _pubsubs() -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["name"]: d
        for d in _documents("*.yaml")
        if d.get("kind") == "Component" and d["spec"]["type"] == "pubsub.kafka"
    }


def test_both_topics_are_protected_on_every_kafka_component() -> None:
    for component in _pubsubs().values():
        metadata = {m["name"]: m.get("value", "") for m in component["spec"]["metadata"]}
        assert set(metadata["protectedTopics"].split(",")) == PROTECTED


def test_every_subscriber_may_read_its_topic_and_publish_its_dead_letters() -> None:
    pubsubs = _pubsubs()
    subscriptions = [d for d in _documents("subscriptions/*.yaml") if d["kind"] == "Subscription"]
    assert subscriptions
    for subscription in subscriptions:
        component = pubsubs[subscription["spec"]["pubsubname"]]
        for app in subscription["scopes"]:
            assert subscription["spec"]["topic"] in _scopes(component, "subscriptionScopes")[app]
            dead_letters = subscription["spec"].get("deadLetterTopic")
            if dead_letters:
                assert dead_letters in _scopes(component, "publishingScopes")[app]


def test_only_the_producers_may_publish_task_events() -> None:
    publishing = _scopes(_pubsubs()["kafka-pubsub"], "publishingScopes")
    producers = {app for app, topics in publishing.items() if "task-events" in topics}
    assert producers == {"taskevents-cli", "recurring-task-service", "audit-log-service"}
    assert publishing["notification-service"] == {"task-events-dlq"}


def test_the_harness_gives_a_test_app_the_scopes_of_its_role_and_nothing_more() -> None:
    value = "taskevents-cli=task-events;notification-service=task-events-dlq"
    rendered = dict(
        part.split("=")
        for part in _test_scopes(value, "poison-probe", "notification-service", "publishingScopes")
        .split(";")
    )  # fmt: skip
    suite = ",".join(SUITE_TOPICS)
    assert rendered["poison-probe"] == f"task-events-dlq,{suite}"
    assert rendered["notification-service"] == f"task-events-dlq,{suite}"
    # The suite's publisher stands in for subscribers that dead-letter.
    assert rendered["taskevents-cli"] == f"task-events,{suite},task-events-dlq"
    # An app whose role has no scopes stays without: no protected topic for it.
    alone = _test_scopes(value, "stranger", "websocket-service", "subscriptionScopes")
    assert "stranger" not in alone


def _resiliency_scopes(app_id: str, role: str | None, tmp_path: Path) -> dict[str, list[str]]:
    from tests.support.cluster import render_resources

    render_resources(tmp_path, app_id, consumer_id="group", role=role)
    return {
        d["metadata"]["name"]: d["scopes"]
        for path in sorted(tmp_path.glob("resiliency*.yaml"))
        for d in yaml.safe_load_all(path.read_text())
        if d
    }


def test_an_app_id_standing_in_for_the_audit_log_gets_the_audit_logs_resiliency(
    tmp_path: Path,
) -> None:
    """Its minutes of retries while the database is away, not the other apps' seconds (the
    fault suite found events dead-lettered by a 20 s Postgres stop through this)."""
    scopes = _resiliency_scopes("audit-stand-in", "audit-log-service", tmp_path)
    assert "audit-stand-in" in scopes["audit-log-resiliency"]
    assert "audit-stand-in" not in scopes["taskevents-resiliency"]


def test_a_test_only_app_id_without_a_role_of_its_own_gets_the_shared_resiliency(
    tmp_path: Path,
) -> None:
    scopes = _resiliency_scopes("probe-app", None, tmp_path)
    assert "probe-app" in scopes["taskevents-resiliency"]
    assert "probe-app" not in scopes["audit-log-resiliency"]
