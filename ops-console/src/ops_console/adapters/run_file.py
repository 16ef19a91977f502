"""The sidecars of a Dapr multi-app run file (dapr.yaml), for the console to watch. A small
reader of its own: the console's image does not carry the CLI package."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ops_console.settings import SidecarTarget


def targets_from_run_file(path: Path, *, host: str = "127.0.0.1") -> list[SidecarTarget]:
    document: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    targets = []
    for app in document.get("apps") or []:
        app_port = app.get("appPort")
        metrics = app.get("metricsPort")
        targets.append(
            SidecarTarget(
                app_id=app["appID"],
                dapr_http_url=f"http://{host}:{app['daprHTTPPort']}",
                metrics_url=f"http://{host}:{metrics}/" if metrics else None,
                app_url=f"http://{host}:{app_port}" if app_port else None,
            )
        )
    return targets
