"""compose.yaml, the infrastructure for people with Docker, against DESIGN.md: the broker,
database and SMTP addresses the services use by default, the topics, the credentials."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return document


def design_address(row: str) -> tuple[str, int]:
    for line in (ROOT / "docs" / "DESIGN.md").read_text().splitlines():
        if line.startswith(f"| {row} "):
            match = re.search(r"(\d+\.\d+\.\d+\.\d+):(\d+)", line)
            assert match, line
            return match[1], int(match[2])
    raise AssertionError(f"no row {row!r} in DESIGN.md")


def published(service: dict[str, Any]) -> set[tuple[str, int, int]]:
    ports = set()
    for entry in service.get("ports", []):
        host, host_port, container_port = str(entry).split(":")
        ports.add((host, int(host_port), int(container_port)))
    return ports


def test_infrastructure_only() -> None:
    services = compose()["services"]
    assert set(services) == {"redpanda", "redpanda-topics", "postgres", "mailpit"}
    for service in services.values():
        assert "build" not in service, "the services run on the host (make run), not here"


def test_broker_listens_and_advertises_the_design_address() -> None:
    host, port = design_address("Kafka bootstrap (local default)")
    redpanda = compose()["services"]["redpanda"]
    assert (host, port, port) in published(redpanda)
    arguments = dict(a.split("=", 1) for a in redpanda["command"] if a.startswith("--"))
    assert arguments["--mode"] == "dev-container"
    # Clients on the host are sent to the advertised address: it must be the published one.
    advertised = dict(a.split("://") for a in arguments["--advertise-kafka-addr"].split(","))
    listeners = dict(a.split("://") for a in arguments["--kafka-addr"].split(","))
    assert advertised["external"] == f"{host}:{port}"
    assert listeners["external"].endswith(f":{port}")
    assert "condition" in str(compose()["services"]["redpanda-topics"]["depends_on"])


def test_topics_of_design_are_created_with_their_partitions() -> None:
    design = (ROOT / "docs" / "DESIGN.md").read_text()
    partitions = re.search(r"task-events \((\d+) partitions\)", design)
    assert partitions
    script = " ".join(compose()["services"]["redpanda-topics"]["command"])
    assert f"rpk topic create task-events task-events-dlq -p {partitions[1]}" in script


def test_postgres_matches_the_default_database_url() -> None:
    host, port = design_address("Postgres database (local default)")
    postgres = compose()["services"]["postgres"]
    assert (host, port, 5432) in published(postgres)
    env = postgres["environment"]
    makefile = (ROOT / "Makefile").read_text()
    default_url = f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@{host}:{port}/"
    assert default_url + env["POSTGRES_DB"] in makefile
    assert "taskevents_test" in compose()["configs"]["test-database"]["content"]


def test_mail_catcher_takes_smtp_on_the_design_port_and_has_an_inbox() -> None:
    host, port = design_address("SMTP (local dev sink)")
    mailpit = compose()["services"]["mailpit"]
    assert mailpit["image"].startswith("axllent/mailpit:")
    assert {(host, port, 1025), (host, 8025, 8025)} <= published(mailpit)


def test_every_image_is_pinned() -> None:
    for name, service in compose()["services"].items():
        image = service["image"]
        assert re.search(r":v?\d+\.\d+", image), f"{name}: {image} is not pinned"
