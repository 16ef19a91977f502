"""Prometheus' configuration for a local run, from the run file: one target per app's
/metrics and one per sidecar's metrics port, so ports stay written in dapr.yaml only.

Every target carries `app` (the app-id) and `part` (`app` or `sidecar`), the labels the
rules and dashboards in helm-chart/files/ select on; the chart's PodMonitor sets the same
two. (Not `app_id`: daprd's own series carry that label already, and a target label of the
same name would rename theirs to `exported_app_id`.)

    python -m taskevents_cli.prometheus -f dapr.yaml --out prometheus.yml
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from taskevents_cli.devrun import AppSpec, load_run_file

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "helm-chart" / "files" / "prometheus" / "rules.yaml"
APPS_JOB = "taskevents-apps"
SIDECARS_JOB = "taskevents-sidecars"


def scrape_configuration(
    specs: Iterable[AppSpec],
    *,
    rules: Sequence[Path] = (RULES,),
    scrape_interval: str = "5s",
    host: str = "127.0.0.1",
) -> dict[str, Any]:
    specs = list(specs)

    def group(spec: AppSpec, port: int, part: str) -> dict[str, Any]:
        return {"targets": [f"{host}:{port}"], "labels": {"app": spec.app_id, "part": part}}

    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(path) for path in rules],
        "scrape_configs": [
            {
                "job_name": APPS_JOB,
                "metrics_path": "/metrics",
                "static_configs": [
                    group(spec, spec.app_port, "app") for spec in specs if spec.app_port
                ],
            },
            {
                "job_name": SIDECARS_JOB,
                "metrics_path": "/",
                "static_configs": [group(spec, spec.metrics_port, "sidecar") for spec in specs],
            },
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m taskevents_cli.prometheus", description=__doc__
    )
    parser.add_argument("-f", "--run-file", type=Path, default=Path("dapr.yaml"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scrape-interval", default="5s")
    parser.add_argument(
        "--rules",
        type=Path,
        help="rule file (default: helm-chart/files/prometheus/rules.yaml beside the run file)",
    )
    args = parser.parse_args(argv)
    rules = args.rules or args.run_file.resolve().parent / RULES.relative_to(ROOT)
    # Sentry's address only matters for starting sidecars; the ports are all we read.
    specs = load_run_file(args.run_file, sentry_address="unused")
    configuration = scrape_configuration(
        specs, rules=[rules.resolve()], scrape_interval=args.scrape_interval
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Generated from the run file by `python -m taskevents_cli.prometheus`; do not edit.\n"
        + yaml.safe_dump(configuration, sort_keys=False)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
