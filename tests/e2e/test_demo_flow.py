"""The whole stack as a user runs it: `taskevents demo` publishes a stream of task
life-cycles through a sidecar, and every service reacts to it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import Cluster
from tests.support.authorization import bearer, token
from tests.support.mailbox import mails_to
from tests.support.stack import Stack
from tests.support.waiting import eventually

pytestmark = pytest.mark.e2e

USERS = 3
NOTIFIED = {"task.created", "task.completed"}


async def audit_events_of(http: httpx.AsyncClient, cluster: Cluster, user_id: str) -> list[Any]:
    response = await http.get(
        f"{cluster['audit-log-service'].url}/audit/events",
        params={"user_id": user_id, "limit": 500},
        headers=bearer(user_id),
    )
    response.raise_for_status()
    items: list[Any] = response.json()["items"]
    return items


async def test_demo_stream_flows_through_every_service(
    cluster: Cluster, http: httpx.AsyncClient, stack: Stack, unique: str
) -> None:
    prefix = f"e2e-{unique}".lower()
    watched = f"{prefix}-0"
    websocket = cluster["websocket-service"]
    url = f"ws://127.0.0.1:{websocket.app.spec.app_port}/ws?token={token(watched)}"
    frames: list[dict[str, Any]] = []

    async with websockets.connect(url) as client:
        assert json.loads(await client.recv())["kind"] == "welcome"

        async def collect() -> None:
            async for message in client:
                frames.append(json.loads(message))

        collector = asyncio.create_task(collect())
        cli = Path(sys.executable).parent / "taskevents"
        demo = await asyncio.create_subprocess_exec(
            str(cli),
            "--dapr-http-port", str(cluster.cli.dapr_http_port),
            "--dapr-grpc-port", str(cluster.cli.dapr_grpc_port),
            "demo", "--users", str(USERS), "--rate", "25", "--duration", "6",
            "--user-prefix", prefix,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=os.environ.copy(),
        )  # fmt: skip
        stdout, stderr = await demo.communicate()
        assert demo.returncode == 0, stderr.decode()[-2000:]
        summary = json.loads(stdout.decode().strip().splitlines()[-1])
        assert summary["failed"] == 0
        # Flow, not speed: a loaded machine publishes fewer; enough for every type to occur.
        assert summary["published"] >= 40
        assert "published" in stderr.decode()  # the progress line

        # audit-log-service stores every event of the stream, once.
        users = [f"{prefix}-{i}" for i in range(USERS)]

        async def all_stored() -> list[Any] | None:
            rows = [r for u in users for r in await audit_events_of(http, cluster, u)]
            return rows if len(rows) >= summary["published"] else None

        rows = await eventually(all_stored, timeout=60, what="every demo event in the audit log")
        assert len(rows) == summary["published"]
        assert len({r["event_id"] for r in rows}) == len(rows)
        by_type: dict[str, int] = {}
        for row in rows:
            by_type[row["type"]] = by_type.get(row["type"], 0) + 1
        assert by_type == summary["by_type"]

        # websocket-service: the watched user's client gets exactly that user's events.
        expected = {r["event_id"] for r in rows if r["user_id"] == watched}

        async def all_pushed() -> bool:
            return {f["event"]["event_id"] for f in frames if f["kind"] == "event"} >= expected

        await eventually(all_pushed, timeout=30, what="every event of the watched user pushed")
        collector.cancel()
    pushed = [f["event"] for f in frames if f["kind"] == "event"]
    assert {e["user_id"] for e in pushed} == {watched}
    assert len(pushed) == len(expected)

    # notification-service: one mail per created and per completed task (the default set
    # of notified types), none for updates and deletions.
    notified = {r["event_id"] for r in rows if r["type"] in NOTIFIED}
    addresses = {r["payload"]["user_email"] for r in rows}

    async def all_mailed() -> list[str] | None:
        mails = [m for a in addresses for m in mails_to(stack.mail_dir, a)]
        ids = [m.header("X-Taskevents-Event-Id") or "" for m in mails]
        return ids if set(ids) >= notified else None

    mailed = await eventually(all_mailed, timeout=60, what="a mail for every notified event")
    assert sorted(mailed) == sorted(notified)


async def run_cli(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    cli = Path(sys.executable).parent / "taskevents"
    process = await asyncio.create_subprocess_exec(
        str(cli),
        "--dapr-http-port", str(cluster.cli.dapr_http_port),
        "--dapr-grpc-port", str(cluster.cli.dapr_grpc_port),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_cli_publishes_one_event_and_refuses_bad_input(
    cluster: Cluster, http: httpx.AsyncClient, unique: str
) -> None:
    task_id = f"task-{unique}"
    code, out, err = await run_cli(
        cluster, "publish", "task.updated", "--task-id", task_id, "--user-id", f"u-{unique}",
        "--payload", '{"title": "From the CLI"}',
    )  # fmt: skip
    assert code == 0, err
    event_id = out.strip()

    async def stored() -> list[Any]:
        response = await http.get(
            f"{cluster['audit-log-service'].url}/audit/events",
            params={"task_id": task_id},
            headers=bearer(f"u-{unique}"),
        )
        items: list[Any] = response.json()["items"]
        return items

    rows = await eventually(stored, what="the CLI's event in the audit log")
    assert [(r["event_id"], r["payload"]["title"]) for r in rows] == [(event_id, "From the CLI")]

    code, _, err = await run_cli(
        cluster, "publish", "task.updated", "--task-id", task_id, "--user-id", "u",
        "--payload", "[1, 2]",
    )  # fmt: skip
    assert code == 2
    assert "JSON object" in err
    code, _, err = await run_cli(
        cluster, "publish", "Not A Type", "--task-id", task_id, "--user-id", "u"
    )
    assert code == 2
    assert "type" in err
