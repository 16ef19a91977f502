"""The Prometheus rules and the local scrape configuration, checked by promtool (Debian's
Prometheus, scripts/prometheus.sh): the rules parse, each alert's unit tests pass, and
every alert has a test that sees it fire and one that sees it stay quiet."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import yaml

from taskevents_cli.devrun import load_run_file
from taskevents_cli.prometheus import APPS_JOB, SIDECARS_JOB, scrape_configuration
from taskevents_cli.prometheus import main as prometheus_main

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "helm-chart" / "files" / "prometheus"
RULES = RULES_DIR / "rules.yaml"
RULE_TESTS = RULES_DIR / "rules.test.yaml"


@cache
def promtool() -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "prometheus.sh"), "ensure"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return str(Path(result.stdout.strip().splitlines()[-1]) / "promtool")


def run_promtool(*args: str, cwd: Path = RULES_DIR) -> str:
    result = subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", str(RULES))


def test_every_alert_passes_its_unit_tests() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - firing == set(), "alerts never seen firing"
    assert alerts - quiet == set(), "alerts never seen quiet"
    assert firing | quiet <= alerts, "tests of alerts that do not exist"


def test_a_broken_alert_fails_its_unit_test(tmp_path: Path) -> None:
    broken = RULES.read_text().replace('up{part="app"} == 0', 'up{part="app"} == 2')
    (tmp_path / "rules.yaml").write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert "TaskeventsAppDown" in result.stdout + result.stderr


def test_the_local_configuration_scrapes_every_app_and_sidecar_of_the_run_file(
    tmp_path: Path,
) -> None:
    specs = load_run_file(ROOT / "dapr.yaml", sentry_address="127.0.0.1:50100")
    config = scrape_configuration(specs)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {
        (group["labels"]["app"], group["labels"]["part"]): group["targets"][0]
        for job in jobs.values()
        for group in job["static_configs"]
    }
    for spec in specs:
        assert targets[(spec.app_id, "sidecar")] == f"127.0.0.1:{spec.metrics_port}"
        if spec.app_port:
            assert targets[(spec.app_id, "app")] == f"127.0.0.1:{spec.app_port}"
    assert len(targets) == len(specs) + sum(1 for s in specs if s.app_port)
    assert jobs[APPS_JOB]["metrics_path"] == "/metrics"
    assert {job for job in jobs} == {APPS_JOB, SIDECARS_JOB}
    assert config["rule_files"] == [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    run_promtool("check", "config", str(path))


def test_the_dashboards_are_generated() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "render_dashboards.py"), "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_the_command_writes_the_configuration_with_the_rules_beside_the_run_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "prometheus.yml"
    assert prometheus_main(["-f", str(ROOT / "dapr.yaml"), "--out", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    assert config["rule_files"] == [str(RULES)]
    assert config["global"]["scrape_interval"] == "5s"
    run_promtool("check", "config", str(out))
