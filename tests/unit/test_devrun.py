from __future__ import annotations

from pathlib import Path

import pytest

from taskevents_cli.devrun import load_run_file

ROOT = Path(__file__).resolve().parents[2]
SENTRY = "127.0.0.1:50100"


def test_dapr_yaml_describes_the_four_services_the_console_and_the_cli_sidecar() -> None:
    specs = {s.app_id: s for s in load_run_file(ROOT / "dapr.yaml", sentry_address=SENTRY)}
    assert set(specs) == {
        "notification-service", "recurring-task-service", "audit-log-service",
        "websocket-service", "ops-console", "taskevents-cli",
    }  # fmt: skip
    # The ports of DESIGN.md, in its order.
    assert [specs[a].app_port for a in list(specs)[:4]] == [8001, 8002, 8003, 8004]
    assert specs["taskevents-cli"].app_port is None
    console = specs["ops-console"]
    assert (console.app_port, console.dapr_http_port, console.dapr_grpc_port) == (8005, 3505, 50015)
    assert (specs["taskevents-cli"].dapr_http_port, specs["taskevents-cli"].dapr_grpc_port) == (
        3500,
        50001,
    )
    ports = [
        p for s in specs.values() for p in (s.dapr_http_port, s.dapr_grpc_port, s.metrics_port)
    ]
    assert len(ports) == len(set(ports)), "two sidecars share a port"
    audit = specs["audit-log-service"]
    assert audit.resources_paths == [
        ROOT / "dapr-components",
        ROOT / "dapr-components/subscriptions",
    ]
    # The one app that may be invoked has the access-control policies; the others share one.
    assert audit.config_path == ROOT / "dapr-components/configuration-audit-log-service.yaml"
    assert {s.config_path for a, s in specs.items() if a != "audit-log-service"} == {
        ROOT / "dapr-components/configuration.yaml"
    }
    assert audit.app_dir == ROOT / "audit-log-service"
    assert (audit.app_dir / audit.command[0]).resolve() == ROOT / ".venv/bin/audit-log-service"
    assert audit.env["TASKEVENTS_ENV"] == "development"


def test_daprd_gets_the_same_flags_dapr_run_would_pass() -> None:
    audit = next(
        s
        for s in load_run_file(ROOT / "dapr.yaml", sentry_address=SENTRY)
        if s.app_id == "audit-log-service"
    )
    argv = audit.daprd_argv("daprd")
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert flags["--app-id"] == "audit-log-service"
    assert flags["--app-port"] == "8003"
    assert flags["--dapr-http-port"] == "3503"
    assert flags["--placement-host-address"] == ""
    assert argv.count("--resources-path") == 2
    # What `dapr run` adds when the configuration turns mTLS on, with our Sentry's address.
    assert "--enable-mtls" in argv
    assert argv[argv.index("--sentry-address") + 1] == SENTRY
    env = audit.app_env()
    assert (env["APP_PORT"], env["DAPR_HTTP_PORT"], env["DAPR_GRPC_PORT"]) == (
        "8003",
        "3503",
        "50013",
    )


def test_mtls_without_a_sentry_address_is_refused() -> None:
    with pytest.raises(ValueError, match="mTLS"):
        load_run_file(ROOT / "dapr.yaml")
