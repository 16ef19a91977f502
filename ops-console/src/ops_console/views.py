"""What the pages show, assembled from the ports: plain async functions, no FastAPI."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ops_console.adapters.logs import recent_logs
from ops_console.adapters.procfs import DaprProcess, ProcessTable, sidecar_files
from ops_console.ports import Answer, ServiceUnavailableError, Sidecars
from ops_console.sampler import Sampler
from ops_console.settings import SidecarTarget

HEALTH_TIMEOUT_SECONDS = 2.0


async def _get(sidecars: Sidecars, url: str) -> Answer | str:
    try:
        return await sidecars.get(url, timeout=HEALTH_TIMEOUT_SECONDS)
    except ServiceUnavailableError as error:
        return str(error)


def _local_port(url: str) -> int | None:
    host_port = url.split("//", 1)[-1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    return int(port) if host in ("127.0.0.1", "localhost") and port.isdigit() else None


def _process_of(target: SidecarTarget, processes: list[DaprProcess]) -> DaprProcess | None:
    port = _local_port(target.dapr_http_url)
    for process in processes:
        if process.program == "daprd" and port and process.port("--dapr-http-port") == port:
            return process
    return None


async def app_status(
    target: SidecarTarget, sidecars: Sidecars, process: DaprProcess | None
) -> dict[str, Any]:
    base = target.dapr_http_url
    urls = [f"{base}/v1.0/healthz", f"{base}/v1.0/metadata"]
    if target.app_url:
        urls += [f"{target.app_url}/health", f"{target.app_url}/ready"]
    answers = await asyncio.gather(*(_get(sidecars, url) for url in urls))
    sidecar, metadata = answers[0], answers[1]
    sidecar_ok = isinstance(sidecar, Answer) and sidecar.ok
    status: dict[str, Any] = {
        "app_id": target.app_id,
        "sidecar": target.dapr_http_url,
        "sidecar_healthy": sidecar_ok,
        "sidecar_problem": None if sidecar_ok else _problem(sidecar),
        "runtime_version": None,
        "app_port": None,
        "pid": process.pid if process else None,
        "uptime_seconds": process.uptime_seconds() if process else None,
    }
    if isinstance(metadata, Answer) and metadata.ok and isinstance(metadata.body, dict):
        status["runtime_version"] = metadata.body.get("runtimeVersion")
        connection = metadata.body.get("appConnectionProperties") or {}
        status["app_port"] = connection.get("port")
    if target.app_url:
        health, ready = answers[2], answers[3]
        status["health"] = _body_status(health, "healthy")
        status["ready"] = _body_status(ready, "ready")
        status["failing"] = _failing(ready)
    else:
        status["health"] = status["ready"] = "no app"
        status["failing"] = None
    return status


def _failing(ready: Answer | str) -> dict[str, Any] | None:
    """The parts /ready names as failing, or why it could not be asked."""
    if isinstance(ready, str):
        return {"app": ready}
    failing = ready.body.get("failing") if isinstance(ready.body, dict) else None
    return failing if isinstance(failing, dict) else None


def _problem(answer: Answer | str) -> str:
    return answer if isinstance(answer, str) else f"answered {answer.status}"


def _body_status(answer: Answer | str, good: str) -> str:
    if isinstance(answer, str):
        return "unreachable"
    if isinstance(answer.body, dict) and "status" in answer.body:
        return str(answer.body["status"])
    return good if answer.ok else f"answered {answer.status}"


async def apps_overview(
    targets: Sequence[SidecarTarget], sidecars: Sidecars, processes: ProcessTable
) -> list[dict[str, Any]]:
    local = await asyncio.to_thread(processes.dapr_processes)
    statuses = await asyncio.gather(
        *(app_status(t, sidecars, _process_of(t, local)) for t in targets)
    )
    instances: dict[str, int] = {}
    for status in statuses:
        if status["sidecar_healthy"]:
            instances[status["app_id"]] = instances.get(status["app_id"], 0) + 1
    for status in statuses:
        status["instances"] = instances.get(status["app_id"], 0)
    return list(statuses)


async def app_detail(
    target: SidecarTarget, sidecars: Sidecars, processes: ProcessTable, log_dir: Path
) -> dict[str, Any]:
    local = await asyncio.to_thread(processes.dapr_processes)
    process = _process_of(target, local)
    status = await app_status(target, sidecars, process)
    metadata = await _get(sidecars, f"{target.dapr_http_url}/v1.0/metadata")
    body = metadata.body if isinstance(metadata, Answer) and isinstance(metadata.body, dict) else {}
    files = await asyncio.to_thread(sidecar_files, process) if process else None
    logs = await asyncio.to_thread(recent_logs, log_dir, target.app_id)
    subscriptions = [_subscription(s) for s in body.get("subscriptions", [])]
    for subscription in subscriptions:
        key = f"{subscription['pubsub']}/{subscription['topic']}"
        subscription["bulk"] = files["bulk"].get(key) if files else None
    return {
        "status": status,
        "metadata_problem": None if body else _problem(metadata),
        "components": body.get("components", []),
        "subscriptions": subscriptions,
        "http_endpoints": body.get("httpEndpoints", []),
        "enabled_features": body.get("enabledFeatures", []),
        "app_connection": body.get("appConnectionProperties"),
        "resiliency": files["resiliency"] if files else None,
        "configuration": files["configuration"] if files else None,
        "files_exposed": files is not None,
        "logs": logs,
    }


def _subscription(raw: dict[str, Any]) -> dict[str, Any]:
    rules = raw.get("rules") or []
    if isinstance(rules, dict):  # older daprd: {"rules": [...]}
        rules = rules.get("rules") or []
    return {
        "pubsub": raw.get("pubsubname"),
        "topic": raw.get("topic"),
        "routes": [r.get("path") for r in rules if isinstance(r, dict)],
        "dead_letter_topic": raw.get("deadLetterTopic"),
        "type": raw.get("type"),
        "metadata": raw.get("metadata") or {},
    }


def pubsub_view(sampler: Sampler) -> dict[str, Any]:
    observed = sampler.observed
    lag = observed.lag[-1] if observed.lag else None
    previous = observed.lag[-2].by_group() if len(observed.lag) > 1 else {}
    return {
        "sampled_at": observed.sampled_at,
        "errors": observed.errors,
        "deliveries": [
            {
                "app_id": r.route.app_id,
                "topic": r.route.topic,
                "success": r.totals.success,
                "retry": r.totals.retry,
                "drop": r.totals.drop,
                "success_per_second": round(r.per_second.success, 3),
                "retry_per_second": round(r.per_second.retry, 3),
                "drop_per_second": round(r.per_second.drop, 3),
            }
            for r in sampler.rates()
        ],
        "lag": [
            {
                "group": p.key.group,
                "topic": p.key.topic,
                "partition": p.key.partition,
                "committed": p.committed,
                "end": p.end,
                "lag": p.lag,
            }
            for p in (lag.partitions if lag else ())
        ],
        "groups": [
            {
                "group": group,
                "topic": topic,
                "lag": total,
                "previous_lag": previous.get((group, topic)),
                "members": lag.members.get(group) if lag else None,
            }
            for (group, topic), total in sorted((lag.by_group() if lag else {}).items())
        ],
        "stalls": [
            {
                "group": s.group,
                "topic": s.topic,
                "lag_before": s.lag_before,
                "lag_now": s.lag_now,
                "members": s.members,
                "reason": s.reason,
            }
            for s in sampler.stalls()
        ],
        "dead_letter_depth": observed.dead_letter_depth,
    }
