"""What the benchmarks share: ports, the daprd binary, the machine they ran on, percentiles,
and the comparison of a Dapr path with its direct baseline taking turns in one run (the
median turn of each, the ratio turn by turn, CPU per event by process)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def daprd_path() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "dapr-runtime.sh")],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / "daprd")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "system": platform.platform(),
        "load_average_at_start": os.getloadavg(),
    }


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank; values not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def cpu_us_per_event(used_seconds: Mapping[str, float], events: int) -> dict[str, int]:
    """CPU seconds by process group over a run → µs per event, and their sum as "all"."""
    per_event = {name: round(used / max(events, 1) * 1e6) for name, used in used_seconds.items()}
    return {**per_event, "all": sum(per_event.values())}


def ratio(dapr: float, direct: float) -> float | None:
    """Dapr path over direct baseline (None when the baseline measured nothing)."""
    return round(dapr / direct, 2) if direct else None


def compare_turns(
    dapr: Sequence[Mapping[str, Any]], direct: Sequence[Mapping[str, Any]], figures: Sequence[str]
) -> dict[str, Any]:
    """Dapr and direct runs that took turns, one pair a turn: for each figure, the median of
    each side, their ratio, and the ratio turn by turn (so a turn spoilt by other load on a
    shared machine shows as one)."""
    if len(dapr) != len(direct) or not dapr:
        raise ValueError("one Dapr run and one direct run a turn, at least one turn")
    out: dict[str, Any] = {}
    for figure in figures:
        dapr_median = statistics.median(r[figure] for r in dapr)
        direct_median = statistics.median(r[figure] for r in direct)
        out[figure] = {
            "dapr": dapr_median,
            "direct": direct_median,
            "ratio": ratio(dapr_median, direct_median),
            "ratio_per_turn": [
                ratio(a[figure], b[figure]) for a, b in zip(dapr, direct, strict=True)
            ],
        }
    return out


def cpu_table(rows: Mapping[str, Mapping[str, int]], columns: Sequence[str]) -> list[str]:
    """A markdown table of µs of CPU per event: a row per path, a column per process group."""
    lines = [
        "| CPU µs per event | " + " | ".join(columns) + " | all |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for name, cpu in rows.items():
        cells = [str(cpu[c]) if c in cpu else "-" for c in columns]
        total = cpu.get("all", sum(v for k, v in cpu.items() if k != "all"))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {total} |")
    return lines


def record_results(name: str, record: Mapping[str, Any], table: str, *, no_record: bool) -> None:
    """Print the table; unless `no_record`, keep both as bench/results/<name>.{json,md}."""
    if not no_record:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(table)
    print(table, flush=True)


Batches = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def consume_until(
    consumer: AIOKafkaConsumer,
    stop: asyncio.Event,
    ready: asyncio.Event,
    handle: Callable[[Batches], Awaitable[None]],
) -> None:
    """A direct baseline's loop: batches from `consumer` to `handle`, offsets committed after
    each; `ready` once it has partitions; until `stop`."""
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            if consumer.assignment():
                ready.set()
            await handle(batches)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
