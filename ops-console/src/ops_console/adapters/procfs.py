"""The Dapr processes of this machine, from /proc: which daprd (and placement, sentry,
scheduler) run, their flags and since when; and the resiliency and configuration files a
daprd was started with."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DAPR_PROGRAMS = frozenset({"daprd", "placement", "sentry", "scheduler", "operator", "injector"})
REPEATED_FLAGS = frozenset({"--resources-path", "--components-path"})


@dataclass(frozen=True, slots=True)
class DaprProcess:
    pid: int
    program: str
    flags: dict[str, str]
    resources_paths: tuple[str, ...] = ()
    started_at: float | None = None  # seconds since the epoch

    @property
    def app_id(self) -> str | None:
        return self.flags.get("--app-id")

    def port(self, flag: str) -> int | None:
        value = self.flags.get(flag)
        return int(value) if value and value.isdigit() else None

    def uptime_seconds(self, now: float | None = None) -> float | None:
        if self.started_at is None:
            return None
        return max((now or time.time()) - self.started_at, 0.0)

    def view(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "program": self.program,
            "app_id": self.app_id,
            "http_port": self.port("--dapr-http-port"),
            "grpc_port": self.port("--dapr-grpc-port"),
            "metrics_port": self.port("--metrics-port"),
            "app_port": self.port("--app-port"),
            "uptime_seconds": self.uptime_seconds(),
        }


def parse_argv(argv: list[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    flags: dict[str, str] = {}
    resources: list[str] = []
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            name = "--" + name.lstrip("-")
            if not value and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            if name in REPEATED_FLAGS:
                resources.append(value)
            else:
                flags[name] = value
        i += 1
    return flags, tuple(resources)


@dataclass
class ProcessTable:
    root: Path = field(default_factory=lambda: Path("/proc"))

    def dapr_processes(self) -> list[DaprProcess]:
        boot = self._boot_time()
        ticks = os.sysconf("SC_CLK_TCK")
        found = []
        for pid, argv in self._commands():
            program = Path(argv[0]).name
            if program not in DAPR_PROGRAMS:
                continue
            flags, resources = parse_argv(argv)
            started = self._started_at(pid, boot, ticks)
            found.append(DaprProcess(pid, program, flags, resources, started))
        return sorted(found, key=lambda p: (p.program, p.app_id or "", p.pid))

    def sidecar_on(self, http_port: int) -> DaprProcess | None:
        for process in self.dapr_processes():
            if process.program == "daprd" and process.port("--dapr-http-port") == http_port:
                return process
        return None

    def _commands(self) -> Iterator[tuple[int, list[str]]]:
        for entry in self.root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
            if argv:
                yield int(entry.name), argv

    def _boot_time(self) -> float | None:
        try:
            for line in (self.root / "stat").read_text().splitlines():
                if line.startswith("btime "):
                    return float(line.split()[1])
        except OSError:
            return None
        return None

    def _started_at(self, pid: int, boot: float | None, ticks: int) -> float | None:
        if boot is None:
            return None
        try:
            stat = (self.root / str(pid) / "stat").read_text()
        except OSError:
            return None
        # Field 22 (starttime), counted after the command name, which may hold spaces.
        fields = stat.rsplit(")", 1)[-1].split()
        return boot + int(fields[19]) / ticks


def sidecar_files(process: DaprProcess) -> dict[str, Any]:
    """The Resiliency resources that apply to the sidecar's app, the bulk settings of its
    subscriptions (which the metadata API leaves out) and its Configuration, as the files
    it was started with hold them."""
    app_id = process.app_id
    resiliency = []
    bulk: dict[str, Any] = {}
    for directory in process.resources_paths:
        for path in sorted(Path(directory).glob("*.y*ml")):
            for document in _documents(path):
                scopes = document.get("scopes") or []
                if scopes and app_id not in scopes:
                    continue
                if document.get("kind") == "Resiliency":
                    resiliency.append({"file": str(path), **document})
                spec = document.get("spec") or {}
                if document.get("kind") == "Subscription" and spec.get("bulkSubscribe"):
                    bulk[f"{spec.get('pubsubname')}/{spec.get('topic')}"] = spec["bulkSubscribe"]
    configuration = None
    config = process.flags.get("--config")
    if config:
        documents = [d for d in _documents(Path(config)) if d.get("kind") == "Configuration"]
        configuration = {"file": config, **documents[0]} if documents else None
    return {"resiliency": resiliency, "bulk": bulk, "configuration": configuration}


def _documents(path: Path) -> list[dict[str, Any]]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError):
        return []
