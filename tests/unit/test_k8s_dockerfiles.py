"""The one Dockerfile, read statically for each service's build arguments: the parser that
tests/integration/test_k8s_images.py replays it with, and the rules every image keeps
(uv and the lock, only its own service, non-root, exec form, nothing written at run time)."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "notification-service": 8001,
    "recurring-task-service": 8002,
    "audit-log-service": 8003,
    "websocket-service": 8004,
    "ops-console": 8005,
}
# The name the image starts its service by, whichever service it holds.
ENTRYPOINT_NAME = "taskevents-service"


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    arguments: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str, build_args: dict[str, str] | None = None) -> list[Stage]:
    """Stages of a Dockerfile with their instructions: continuation lines joined, comments
    dropped, `--flag=value` options split off, and `${NAME}` replaced by the build argument
    wherever an ARG in scope declares it — before the first FROM for FROM lines, in the
    stage otherwise, as Docker scopes them (enough for the file in this repository)."""
    build_args = build_args or {}
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    global_args: set[str] = set()
    stage_args: set[str] = set()
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG":
            name = rest.strip().partition("=")[0]
            (stage_args if stages else global_args).add(name)
            continue
        rest = _substitute(rest, global_args if keyword == "FROM" else stage_args, build_args)
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            stage_name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=parts[0], name=stage_name))
            stage_args = set()
            continue
        assert stages, f"{keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(keyword, flags, rest))
    return stages


def _substitute(arguments: str, in_scope: set[str], build_args: dict[str, str]) -> str:
    for name in re.findall(r"\$\{([A-Z_]+)\}", arguments):
        if name in in_scope:
            assert name in build_args, f"no value for the build argument {name}"
            arguments = arguments.replace(f"${{{name}}}", build_args[name])
    return arguments


def env_pairs(arguments: str) -> list[tuple[str, str]]:
    pairs = []
    for word in shlex.split(arguments):
        name, equals, value = word.partition("=")
        assert equals, f"ENV {arguments!r}: use the NAME=value form"
        pairs.append((name, value))
    return pairs


def exec_form(arguments: str) -> list[str]:
    value = json.loads(arguments)
    assert isinstance(value, list), f"{arguments!r} is not in exec form (a JSON array)"
    assert all(isinstance(v, str) for v in value)
    return [str(v) for v in value]


def dockerfile(app_id: str) -> list[Stage]:
    """The stages as `docker build --build-arg SERVICE=<app_id> --build-arg PORT=<port>`
    sees them."""
    build_args = {"SERVICE": app_id, "PORT": str(SERVICES[app_id])}
    return parse_dockerfile((ROOT / "Dockerfile").read_text(), build_args)


def makefile_uv_version() -> str:
    match = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "UV_VERSION not found in the Makefile"
    return match.group(1)


@pytest.mark.parametrize("app_id", SERVICES)
def test_image_is_built_with_the_pinned_uv_from_the_lock_file(app_id: str) -> None:
    stages = dockerfile(app_id)
    assert stages[0].base == f"ghcr.io/astral-sh/uv:{makefile_uv_version()}"
    build = stages[1]
    runs = [shlex.split(run.arguments) for run in build.all("RUN")]
    syncs = [argv for argv in runs if argv[:1] == ["uv"]]
    assert syncs, "the build stage installs nothing"
    # Besides the installs, only the link that names the service's script for ENTRYPOINT.
    link = f"/app/.venv/bin/{ENTRYPOINT_NAME}"
    assert [argv for argv in runs if argv[:1] != ["uv"]] == [["ln", "-s", app_id, link]]
    for argv in syncs:
        assert argv[:2] == ["uv", "sync"], f"the build stage runs {argv}, not uv sync"
        # Only what this service declares, exactly as locked, without the dev group.
        for flag in ("--frozen", "--no-dev"):
            assert flag in argv
        assert argv[argv.index("--package") + 1] == app_id
    assert "--no-editable" in syncs[-1], "the last sync must install wheels, not the checkout"
    copied = [c.arguments.split()[0] for c in build.all("COPY") if "from" not in c.flags]
    other_services = set(SERVICES) - {app_id}
    assert not any(src in other_services for src in copied), "another service's code is copied"


@pytest.mark.parametrize("app_id", SERVICES)
def test_runtime_stage_is_non_root_read_only_and_in_exec_form(app_id: str) -> None:
    runtime = dockerfile(app_id)[-1]
    assert runtime.name is None
    assert runtime.base == dockerfile(app_id)[1].base, "build and run on the same Python"
    users = runtime.all("USER")
    assert users, "the image runs as root"
    uid, _, gid = users[-1].arguments.partition(":")
    assert uid.isdigit(), "USER must be numeric (runAsNonRoot can only check a number)"
    assert gid.isdigit()
    assert min(int(uid), int(gid)) >= 1000
    env = dict(pair for i in runtime.all("ENV") for pair in env_pairs(i.arguments))
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["APP_PORT"] == str(SERVICES[app_id])
    # Pods reach the app on the pod's address, not only the loopback.
    assert env["APP_HOST"] == "0.0.0.0"
    assert env["TASKEVENTS_ENV"] == "production", "placeholder secrets are refused by default"
    assert [e.arguments for e in runtime.all("EXPOSE")] == [str(SERVICES[app_id])]
    (entrypoint,) = runtime.all("ENTRYPOINT")
    assert exec_form(entrypoint.arguments) == [ENTRYPOINT_NAME]
    for cmd in runtime.all("CMD"):
        exec_form(cmd.arguments)
    for copy in runtime.all("COPY"):
        assert copy.flags.get("chown") == "root:root", "the service must not own its files"
    assert not runtime.all("RUN") or all(
        "uv " not in run.arguments for run in runtime.all("RUN")
    ), "nothing is installed in the runtime stage"


def test_build_context_excludes_local_environments_and_caches() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in ("**/.venv", "**/__pycache__", ".git", "tests"):
        assert pattern in ignored


def test_build_arguments_are_substituted_only_where_an_arg_declares_them() -> None:
    text = (
        "ARG SERVICE\nFROM base-${SERVICE} AS one\nCOPY ${SERVICE} x\n"
        "FROM two\nARG SERVICE\nCOPY ${SERVICE} y\n"
    )
    one, two = parse_dockerfile(text, {"SERVICE": "svc"})
    assert one.base == "base-svc"
    # A global ARG is not in scope inside a stage until the stage declares it again.
    assert one.all("COPY")[0].arguments == "${SERVICE} x"
    assert two.all("COPY")[0].arguments == "svc y"


@pytest.mark.parametrize("app_id", SERVICES)
def test_every_build_argument_a_stage_uses_is_declared_in_it(app_id: str) -> None:
    for stage in dockerfile(app_id):
        for instruction in stage.instructions:
            assert "${SERVICE}" not in instruction.arguments, instruction
            assert "${PORT}" not in instruction.arguments, instruction


def test_parser_joins_continuations_and_splits_flags() -> None:
    stages = parse_dockerfile(
        "FROM a AS one\n# comment\nRUN --mount=type=cache,target=/c \\\n    uv sync \\\n"
        '    --frozen\nFROM b\nENTRYPOINT ["x"]\n'
    )
    assert [(s.base, s.name) for s in stages] == [("a", "one"), ("b", None)]
    (run,) = stages[0].all("RUN")
    assert run.flags == {"mount": "type=cache,target=/c"}
    assert shlex.split(run.arguments) == ["uv", "sync", "--frozen"]
    assert exec_form(stages[1].all("ENTRYPOINT")[0].arguments) == ["x"]


@pytest.mark.parametrize("app_id", SERVICES)
def test_every_service_listens_where_the_image_says(
    app_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_type = importlib.import_module(f"{app_id.replace('-', '_')}.settings").Settings
    monkeypatch.setenv("APP_HOST", "0.0.0.0")
    monkeypatch.setenv("APP_PORT", str(SERVICES[app_id]))
    settings = settings_type()
    assert (settings.host, settings.port) == ("0.0.0.0", SERVICES[app_id])
