"""Write the Grafana dashboards of helm-chart/files/dashboards/ (the chart ships them as
ConfigMaps for Grafana's dashboard sidecar): an overview of the event flow, the pub/sub
panels Dapr's own dashboards lack, and one per app.

    python scripts/render_dashboards.py           regenerate the JSON files
    python scripts/render_dashboards.py --check   exit 1 when a file is stale

Every query selects on the labels the scrape configuration gives each target — `app` (the
app-id) and `part` (`app` or `sidecar`) — or on daprd's own `app_id`, and on the recording
rules of helm-chart/files/prometheus/rules.yaml. A panel whose series only exist once
something went wrong says so in its description, starting with "Empty until"
(tests/integration/test_prometheus.py then checks only that its query is sound).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "helm-chart" / "files" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
EMPTY_UNTIL = "Empty until"


@dataclass
class Panel:
    title: str
    exprs: list[tuple[str, str]]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    width: int = 12


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    rows: list[tuple[str, list[Panel]]] = field(default_factory=list)


def deliveries(app: str) -> list[Panel]:
    return [
        Panel(
            "Deliveries from the sidecar, by answer",
            [
                (
                    "sum by (topic, status) "
                    f'(taskevents:pubsub_deliveries:rate5m{{app_id="{app}"}})',
                    "{{topic}} {{status}}",
                )
            ],
            unit="reqps",
            description="What daprd delivered to the app and what the app answered "
            "(success, retry, drop), per topic; 5-minute rate.",
        ),
        Panel(
            "Handled by the subscription routes",
            [
                (
                    "sum by (route, status) "
                    f'(rate(taskevents_deliveries_total{{app="{app}"}}[{RATE}]))',
                    "{{route}} {{status}}",
                )
            ],
            unit="reqps",
        ),
        Panel(
            "Handling time p95",
            [
                (
                    "histogram_quantile(0.95, sum by (le, route) "
                    f'(rate(taskevents_delivery_seconds_bucket{{app="{app}"}}[{RATE}])))',
                    "{{route}}",
                )
            ],
            unit="s",
        ),
    ]


def health(app: str) -> list[Panel]:
    return [
        Panel(
            "Targets up",
            [(f'up{{app="{app}"}}', "{{part}} {{instance}}")],
            kind="stat",
            description="1 while Prometheus can scrape the app's /metrics and its "
            "sidecar's metrics port.",
        ),
        Panel(
            "Sidecar HTTP API requests",
            [
                (
                    "sum by (method, status) "
                    f'(rate(dapr_http_server_request_count{{app_id="{app}"}}[{RATE}]))',
                    "{{method}} {{status}}",
                )
            ],
            unit="reqps",
            description="Calls the sidecar's HTTP API answered (health checks, metadata, "
            "invocation, publishing over HTTP).",
        ),
    ]


def service(uid: str, app: str, title: str, own: list[Panel], *, subscribes: bool) -> Dashboard:
    rows = [("Health", health(app))]
    if subscribes:
        rows.append(("Deliveries", deliveries(app)))
    rows.append((title, own))
    return Dashboard(uid, f"taskevents / {app}", f"{app} and its Dapr sidecar.", rows)


DASHBOARDS = [
    Dashboard(
        "taskevents-overview",
        "taskevents / overview",
        "The event flow: published to task-events, delivered to each service, how far each "
        "consumer group is behind, and what ended as a dead letter.",
        [
            (
                "Flow",
                [
                    Panel(
                        "Published per topic",
                        [
                            (
                                "sum by (topic) (taskevents:pubsub_publishes:rate5m)",
                                "{{topic}}",
                            )
                        ],
                        unit="reqps",
                        description="Events the sidecars produced to Kafka (publishes by the "
                        "CLI, recurring triggers, replays, dead letters).",
                    ),
                    Panel(
                        "Delivered per app",
                        [
                            (
                                "sum by (app_id) "
                                '(taskevents:pubsub_deliveries:rate5m{status="success"})',
                                "{{app_id}}",
                            )
                        ],
                        unit="reqps",
                    ),
                    Panel(
                        "Consumer lag per group",
                        [("sum by (group) (taskevents:consumer_lag_messages:sum)", "{{group}}")],
                        description="Messages each group has not committed yet, from the "
                        "ops console's reading of the broker.",
                    ),
                    Panel(
                        "Dead letters held",
                        [("taskevents_console_dead_letter_depth_messages", "{{topic}}")],
                        kind="stat",
                    ),
                ],
            ),
            (
                "Health",
                [
                    Panel(
                        "Targets up",
                        [('sum by (part) (up{part!=""})', "{{part}}")],
                        kind="stat",
                        description="Apps and sidecars Prometheus can scrape.",
                    ),
                    Panel(
                        "Targets down",
                        [('up{part!=""} == 0', "{{app}} {{part}}")],
                        kind="table",
                        description=f"{EMPTY_UNTIL} an app or a sidecar stops answering: "
                        "a row per target that does not.",
                    ),
                    Panel(
                        "Firing alerts",
                        [
                            (
                                'ALERTS{alertstate="firing", alertname=~"Taskevents.*"}',
                                "{{alertname}}",
                            )
                        ],
                        kind="table",
                        description=f"{EMPTY_UNTIL} an alert of the taskevents rules fires.",
                    ),
                ],
            ),
        ],
    ),
    Dashboard(
        "taskevents-pubsub",
        "taskevents / pub/sub",
        "Per topic and app what daprd delivered and what the apps answered, consumer lag per "
        "group and partition, and the dead-letter topic: what Dapr's own dashboards lack.",
        [
            (
                "Deliveries",
                [
                    Panel(
                        f"Delivered: {status}",
                        [
                            (
                                "sum by (app_id, topic) "
                                f'(taskevents:pubsub_deliveries:rate5m{{status="{status}"}})',
                                "{{app_id}} ← {{topic}}",
                            )
                        ],
                        unit="reqps",
                        width=8,
                        description=description,
                    )
                    for status, description in (
                        ("success", "Deliveries the app answered SUCCESS to."),
                        (
                            "retry",
                            f"{EMPTY_UNTIL} an app answers RETRY (a dependency down): daprd "
                            "exports a status only once it happened.",
                        ),
                        (
                            "drop",
                            f"{EMPTY_UNTIL} an app answers DROP (an event that can never "
                            "succeed): each one goes to the dead-letter topic.",
                        ),
                    )
                ],
            ),
            (
                "Lag",
                [
                    Panel(
                        "Lag per group and partition",
                        [
                            (
                                "sum by (group, topic, partition) "
                                "(taskevents_console_consumer_lag_messages)",
                                "{{group}} {{topic}}/{{partition}}",
                            )
                        ],
                    ),
                    Panel(
                        "Stalled groups",
                        [("taskevents_console_stalled_groups", "stalled")],
                        kind="stat",
                        description="Groups whose lag grew while their app delivered nothing.",
                    ),
                ],
            ),
            (
                "Dead letters",
                [
                    Panel(
                        "Dead-letter topic depth",
                        [("taskevents_console_dead_letter_depth_messages", "{{topic}}")],
                    ),
                    Panel(
                        "Filed by the audit log",
                        [
                            (
                                "sum by (result) "
                                f"(rate(taskevents_audit_dead_letters_total[{RATE}]))",
                                "{{result}}",
                            )
                        ],
                        unit="reqps",
                    ),
                    Panel(
                        "Published per topic and app",
                        [
                            (
                                "sum by (app_id, topic) (taskevents:pubsub_publishes:rate5m)",
                                "{{app_id}} → {{topic}}",
                            )
                        ],
                        unit="reqps",
                    ),
                    Panel(
                        "Operator actions",
                        [
                            (
                                "sum by (action) "
                                "(increase(taskevents_audit_dead_letter_actions_total"
                                f"[{RATE}]))",
                                "{{action}}",
                            )
                        ],
                    ),
                ],
            ),
        ],
    ),
    service(
        "taskevents-audit-log-service",
        "audit-log-service",
        "Audit log",
        [
            Panel(
                "Events stored",
                [
                    (
                        f"sum by (result) (rate(taskevents_audit_events_total[{RATE}]))",
                        "{{result}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Partitions dropped by the retention",
                [("taskevents_audit_partitions_dropped_total", "dropped")],
                kind="stat",
            ),
        ],
        subscribes=True,
    ),
    service(
        "taskevents-notification-service",
        "notification-service",
        "Notifications",
        [
            Panel(
                "Notifications by channel and outcome",
                [
                    (
                        f"sum by (channel, status) (rate(taskevents_notifications_total[{RATE}]))",
                        "{{channel}} {{status}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Failed sends",
                [
                    (
                        "sum by (channel) "
                        f'(rate(taskevents_notifications_total{{status="failed"}}[{RATE}]))',
                        "{{channel}}",
                    )
                ],
                unit="reqps",
                description=f"{EMPTY_UNTIL} a send fails (mail server or SMS provider down): "
                "the counter has no series for an outcome that never happened.",
            ),
        ],
        subscribes=True,
    ),
    service(
        "taskevents-recurring-task-service",
        "recurring-task-service",
        "Schedules",
        [
            Panel(
                "Due occurrences",
                [
                    (
                        f"sum by (result) (rate(taskevents_recurring_occurrences_total[{RATE}]))",
                        "{{result}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Outbox relayed",
                [
                    (
                        "sum by (result) "
                        f"(rate(taskevents_recurring_outbox_relayed_total[{RATE}]))",
                        "{{result}}",
                    )
                ],
                unit="reqps",
            ),
            Panel(
                "Trigger lateness p95",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(taskevents_recurring_trigger_lateness_seconds_bucket[{RATE}])))",
                        "p95",
                    )
                ],
                unit="s",
            ),
        ],
        subscribes=True,
    ),
    service(
        "taskevents-websocket-service",
        "websocket-service",
        "Live stream",
        [
            Panel("Open connections", [("sum(taskevents_websocket_connections)", "connections")]),
            Panel(
                "Frames sent",
                [(f"sum(rate(taskevents_websocket_frames_sent_total[{RATE}]))", "frames")],
                unit="reqps",
            ),
            Panel(
                "Slow clients closed",
                [
                    (
                        f"sum(increase(taskevents_websocket_slow_clients_closed_total[{RATE}]))",
                        "closed",
                    )
                ],
            ),
            Panel(
                "Resumes",
                [
                    (
                        f"sum by (status) (rate(taskevents_websocket_resumes_total[{RATE}]))",
                        "{{status}}",
                    )
                ],
                description=f"{EMPTY_UNTIL} a client reconnects with the last event id it saw.",
            ),
        ],
        subscribes=True,
    ),
    service(
        "taskevents-ops-console",
        "ops-console",
        "Console",
        [
            Panel(
                "Lag it reads",
                [
                    (
                        "sum by (group, topic) (taskevents_console_consumer_lag_messages)",
                        "{{group}} {{topic}}",
                    )
                ],
            ),
            Panel(
                "Sources it cannot read",
                [("taskevents_console_sample_failing", "{{source}}")],
                kind="stat",
                description="1 while the broker or a sidecar's metrics could not be sampled.",
            ),
        ],
        subscribes=False,
    ),
]


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
            }
            for i, (expr, legend) in enumerate(panel.exprs)
        ],
    }
    if panel.description:
        document["description"] = panel.description
    if panel.kind == "table":
        document["targets"][0]["format"] = "table"
        document["targets"][0]["instant"] = True
    return document


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    for row_title, row in dashboard.rows:
        panels.append(
            {"id": len(panels) + 1, "type": "row", "title": row_title, "collapsed": False,
             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []}
        )  # fmt: skip
        y += 1
        x = 0
        for panel in row:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(panel_json(panel, len(panels) + 1, x, y))
            x += panel.width
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["taskevents", "dapr"],
        "editable": True,
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "panels": panels,
    }


def rendered() -> dict[Path, str]:
    return {
        TARGET / f"{d.uid}.json": json.dumps(dashboard_json(d), indent=2, ensure_ascii=False) + "\n"
        for d in DASHBOARDS
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    files = rendered()
    stale = sorted(
        str(p.relative_to(ROOT)) for p, text in files.items()
        if not p.exists() or p.read_text() != text
    )  # fmt: skip
    extra = sorted(str(p.relative_to(ROOT)) for p in TARGET.glob("*.json") if p not in files)
    if args.check:
        for name in stale + extra:
            print(f"stale: {name} (run python scripts/render_dashboards.py)", file=sys.stderr)  # noqa: T201
        return 1 if stale or extra else 0
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in extra:
        (ROOT / name).unlink()
    for path, text in files.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
