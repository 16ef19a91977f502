"""What the benchmarks read about processes from /proc: CPU time, resident memory, and the
local infrastructure's processes (Postgres, the Kafka broker) found by name."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int:
    """Resident memory of a process now (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def pids_where(match: Callable[[str, str], bool]) -> list[int]:
    """The processes for which match(command name, command line) holds."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if match(name, command_line):
            pids.append(int(entry.name))
    return pids


def one_process(pid: int | None) -> Callable[[], list[int]]:
    """A group of one known process (none when there is no pid)."""
    return lambda: [] if pid is None else [pid]


def _state() -> str:
    """The local stack's state directory, as scripts/stack.sh and tests/support/stack.py
    find it: the broker and database of that stack only, not another engineer's own."""
    return os.environ.get("TASKEVENTS_STATE") or str(
        Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "taskevents"
    )


def postgres_pids() -> list[int]:
    """The stack's postmaster (started with its data directory) and its children."""
    data = f"{_state()}/postgres/data"
    postmasters = pids_where(lambda name, line: name == "postgres" and data in line)
    if not postmasters:  # a database the stack does not run (DATABASE_URL): every postgres
        return pids_where(lambda name, _: name == "postgres")
    children = pids_where(lambda name, _: name == "postgres")
    return postmasters + [p for p in children if _parent(p) in postmasters]


def kafka_pids() -> list[int]:
    """The stack's broker (its server.properties under the state directory); every broker
    when the stack runs none (KAFKA_BROKERS elsewhere)."""
    brokers = pids_where(lambda name, line: name == "java" and "kafka.Kafka" in line)
    ours = [p for p in brokers if _state() in _command_line(p)]
    return ours or brokers


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class CpuMeter:
    """CPU seconds used by named groups of processes between two readings. A group is a
    function returning its pids now, so that processes started meanwhile count too (whole);
    one that ended meanwhile is left out, rather than taking its past CPU off the sum (other
    people's brokers and databases come and go on a shared machine)."""

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self._groups = dict(groups)

    def read(self) -> dict[str, dict[int, float]]:
        return {name: {p: cpu_seconds(p) for p in pids()} for name, pids in self._groups.items()}

    @staticmethod
    def used(
        before: Mapping[str, Mapping[int, float]], after: Mapping[str, Mapping[int, float]]
    ) -> dict[str, float]:
        return {
            name: sum(
                max(0.0, seconds - before[name].get(pid, 0.0))
                for pid, seconds in after[name].items()
            )
            for name in before
        }
