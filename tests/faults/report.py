"""The table of a fault run (fault by events in flight, lost, duplicated, time to recover),
saved under bench/results/ with its seed: faults-short.{md,json} or faults-soak.{md,json}."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.faults import checker
from tests.support.stack import ROOT

if TYPE_CHECKING:
    from tests.faults.test_fault_suite import Run

RESULTS = ROOT / "bench" / "results"


def _effects(run: Run) -> tuple[set[str], set[str]]:
    """Event ids with a lost or a doubled effect anywhere (audit, mail, SMS, WebSocket)."""
    findings = run.findings
    audit_lost, audit_doubled = checker.audit_problems(findings)
    note_lost, note_doubled, _ = checker.notification_problems(findings)
    ws_missing, ws_doubled, _ = checker.websocket_problems(findings, run.clients)
    lost = set(audit_lost) | {x.split("/")[0] for x in note_lost}
    lost |= {x.split(":")[1] for x in ws_missing}
    doubled = set(audit_doubled) | {x.split("/")[0] for x in note_doubled}
    doubled |= {x.split(":")[1] for x in ws_doubled}
    return lost, doubled


def problems(run: Run) -> dict[str, list[str]]:
    """What each check found, by event id (dead-lettered ones marked), for the record."""
    findings = run.findings
    marked = run.dead_lettered

    def mark(items: list[str]) -> list[str]:
        return [f"{x} (dead-lettered)" if any(e in x for e in marked) else x for x in items]

    audit_lost, audit_doubled = checker.audit_problems(findings)
    note_lost, note_doubled, unreasoned = checker.notification_problems(findings)
    ws_missing, ws_doubled, ws_disordered = checker.websocket_problems(findings, run.clients)
    rec_missing, rec_doubled = checker.recurring_problems(findings, run.schedules)
    return {
        "audit_lost": mark(audit_lost),
        "audit_duplicated": mark(audit_doubled),
        "notification_lost": mark(note_lost),
        "notification_duplicated": mark(note_doubled),
        "dead_letters_without_reason": [str(len(unreasoned))],
        "websocket_missing": mark(ws_missing),
        "websocket_duplicated": mark(ws_doubled),
        "websocket_out_of_order": mark(ws_disordered),
        "recurring_missing": rec_missing,
        "recurring_duplicated": rec_doubled,
        "dead_letter_key": checker.dead_letter_key_problems(findings),
    }


def rows(run: Run) -> list[dict[str, Any]]:
    lost, doubled = _effects(run)
    table = []
    for record in run.records:
        until = record.recovered or record.ended
        in_flight = [p.event_id for p in run.published if record.started <= p.at <= until]
        table.append(
            {
                "fault": record.name,
                "detail": record.detail,
                "in_flight": len(in_flight),
                "dead_lettered": sum(1 for e in in_flight if e in run.dead_lettered),
                "lost": sum(1 for e in in_flight if e in lost),
                "duplicated": sum(1 for e in in_flight if e in doubled),
                "outage_s": round(record.ended - record.started, 1),
                "recover_s": round(record.recovery_seconds, 1) if record.recovered else None,
            }
        )
    return table


def write_report(run: Run) -> Path:
    lost, doubled = _effects(run)
    table = rows(run)
    kind = "soak" if run.soak_minutes else "short"
    summary = {
        "seed": run.seed,
        "soak_minutes": run.soak_minutes,
        "run_seconds": round(run.seconds),
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "published": len(run.published),
        "types": dict(Counter(p.type for p in run.published)),
        "mails": sum(run.findings.email_counts.values()),
        "sms": sum(run.findings.sms_counts.values()),
        "websocket_events": {u: len(e) for u, e in run.clients.items()},
        "resumes": {u: [r.get("status") for r in rs] for u, rs in run.resumes.items()},
        "dead_letters": len(run.findings.dead_letters),
        "dead_letter_topic_messages": len(run.findings.dlq),
        "replayed": run.replayed,
        "lost_total": len(lost),
        "duplicated_total": len(doubled),
        "faults": table,
        "problems": problems(run),
        "dead_letter_samples": [
            {k: str(v)[:300] for k, v in d.items()} for d in run.findings.dead_letters[:5]
        ],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"faults-{kind}.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    lines = [
        f"# Fault suite, {kind} run — seed {run.seed}",
        "",
        f"Recorded {summary['recorded_at']}; replay with `--fault-seed {run.seed}`"
        + (f" `--soak-minutes {run.soak_minutes:g}`" if run.soak_minutes else "")
        + f". {len(run.published)} events published, {summary['mails']} mails, "
        f"{summary['sms']} SMS, {summary['dead_letters']} dead letters "
        f"({run.replayed} replayed once at the end), "
        f"run {summary['run_seconds']} s.",
        "",
        "| fault | replica / detail | events in flight | dead-lettered, replayed | lost "
        "| duplicated | outage s | consumers caught up s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table:
        detail = ", ".join(f"{k}={v}" for k, v in row["detail"].items())
        lines.append(
            f"| {row['fault']} | {detail} | {row['in_flight']} | {row['dead_lettered']} | "
            f"{row['lost']} | "
            f"{row['duplicated']} | {row['outage_s']} | {row['recover_s']} |"
        )
    lines += ["", f"Lost overall: {len(lost)}; duplicated overall: {len(doubled)}.", ""]
    path = RESULTS / f"faults-{kind}.md"
    path.write_text("\n".join(lines))
    return path
