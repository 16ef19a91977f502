"""The apps' recent logs, where the local runner writes them ($TASKEVENTS_STATE/logs)."""

from __future__ import annotations

from pathlib import Path

TAIL_BYTES = 64 * 1024


def log_files(log_dir: Path, app_id: str) -> list[Path]:
    """The app's and its sidecar's logs: `<dir>/<app-id>_app.log` as `make run` writes them,
    or `<dir>/<app-id>/…` as the test harness does."""
    names = [f"{app_id}_app.log", f"{app_id}_daprd.log"]
    found = []
    for directory in (log_dir, log_dir / app_id):
        found += [directory / n for n in names if (directory / n).is_file()]
    return found


def tail(path: Path, lines: int) -> list[str]:
    with path.open("rb") as file:
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(size - TAIL_BYTES, 0))
        text = file.read().decode(errors="replace")
    return text.splitlines()[-lines:]


def recent_logs(log_dir: Path, app_id: str, *, lines: int = 100) -> dict[str, list[str]] | None:
    """Per file, its last lines; None when the logs are not exposed here."""
    files = log_files(log_dir, app_id)
    if not files:
        return None
    result = {}
    for path in files:
        try:
            result[path.name] = tail(path, lines)
        except OSError as error:
            result[path.name] = [f"not readable: {error}"]
    return result
