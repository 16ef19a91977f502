"""The Dockerfile, replayed for each service without a Docker engine: the build stage's COPY
and `uv sync` steps into a scratch root, then the runtime stage's ENV, USER and exec-form
ENTRYPOINT started from it — as PID 1 of a PID namespace of its own and as the image's
user (like in a container), the installed tree read-only, with a database of its own —
until /health answers; then SIGTERM ends it with exit status 0 within the pod's grace
period, and nothing was written outside /tmp."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.support.stack import Stack, free_port, scratch_database
from tests.support.waiting import eventually
from tests.unit.test_k8s_dockerfiles import (
    ROOT,
    SERVICES,
    Stage,
    dockerfile,
    env_pairs,
    exec_form,
)

pytestmark = pytest.mark.integration

# The chart's terminationGracePeriodSeconds: a pod is killed this long after SIGTERM.
GRACE_SECONDS = 30
# Paths the .dockerignore keeps out of the build context.
NOT_IN_CONTEXT = shutil.ignore_patterns(
    ".venv", "__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".pytest_cache"
)


class ImageRoot:
    """A directory standing in for the image's file system: /app/.venv is <root>/app/.venv."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_path: str, workdir: str = "/") -> Path:
        absolute = image_path if image_path.startswith("/") else f"{workdir}/{image_path}"
        return self.root / absolute.lstrip("/")

    def map_value(self, value: str, *, only_existing: bool = True) -> str:
        """Point the image paths in an ENV value (PATH-like lists too) into the root; with
        only_existing, absolute paths outside what the image added (/usr/bin) stay."""
        parts = []
        for part in value.split(":"):
            top = part.lstrip("/").split("/")[0]
            if part.startswith("/") and top and (not only_existing or (self.root / top).exists()):
                part = str(self.path(part))
            parts.append(part)
        return ":".join(parts)


def expand(value: str, env: dict[str, str]) -> str:
    for name, current in env.items():
        value = value.replace(f"${{{name}}}", current).replace(f"${name}", current)
    return value


def copy_from_context(image: ImageRoot, arguments: str, workdir: str) -> None:
    *sources, destination = shlex.split(arguments)
    into_directory = destination.endswith("/") or len(sources) > 1
    target = image.path(destination, workdir)
    for source in sources:
        origin = ROOT / source
        assert origin.exists(), f"COPY {source}: not in the build context"
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=NOT_IN_CONTEXT, dirs_exist_ok=True)
        else:
            file_target = target / origin.name if into_directory else target
            file_target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, file_target)


def build(image: ImageRoot, stage: Stage) -> None:
    """The build stage: COPY from the context, ENV, WORKDIR and the uv commands, with the
    host's uv (same version, checked by the unit test) and its cache."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH"):
        env.pop(name, None)
    workdir = "/"
    for instruction in stage.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.arguments
            image.path(workdir).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            for name, value in env_pairs(instruction.arguments):
                env[name] = value
        elif instruction.keyword == "COPY" and "from" not in instruction.flags:
            copy_from_context(image, instruction.arguments, workdir)
        elif instruction.keyword == "RUN":
            # Image paths in the arguments (the entrypoint's link) point into the root.
            argv = [
                image.map_value(word, only_existing=False) if word.startswith("/") else word
                for word in shlex.split(instruction.arguments)
            ]
            run_env = env | {
                k: image.map_value(v, only_existing=False)
                for k, v in env.items()
                if k.startswith("UV_")
            }
            result = subprocess.run(
                argv, cwd=image.path(workdir), env=run_env, capture_output=True, text=True,
                timeout=600, check=False,
            )  # fmt: skip
            assert result.returncode == 0, f"{argv} failed:\n{result.stderr[-3000:]}"


def runtime_env(image: ImageRoot, stage: Stage) -> tuple[dict[str, str], list[str], str | None]:
    """Install the runtime stage's files; return its environment, command and user."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    command: list[str] = []
    user: str | None = None
    for instruction in stage.instructions:
        if instruction.keyword == "COPY" and "from" in instruction.flags:
            source, destination = shlex.split(instruction.arguments)
            # Console scripts carry the venv's absolute path in their shebang.
            assert source == destination, "the venv must keep its build-time path"
            assert image.path(source).exists(), f"COPY --from: {source} was not built"
        elif instruction.keyword == "COPY":
            copy_from_context(image, instruction.arguments, "/")
        elif instruction.keyword == "ENV":
            for name, value in env_pairs(instruction.arguments):
                env[name] = expand(value, env)
        elif instruction.keyword == "USER":
            user = instruction.arguments
        elif instruction.keyword == "ENTRYPOINT":
            command = exec_form(instruction.arguments)
        elif instruction.keyword == "CMD":
            command = [*command, *exec_form(instruction.arguments)]
    return {k: image.map_value(v) for k, v in env.items()}, command, user


def tree_listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def make_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) | stat.S_IROTH)


def make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def scratch_root() -> Iterator[Path]:
    # Not under pytest's 0700 tmp dir: the image's user must be able to reach the venv.
    root = Path(tempfile.mkdtemp(prefix="taskevents-image-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


@pytest_asyncio.fixture
async def own_database(stack: Stack) -> AsyncIterator[str]:
    """A database of its own, so the service's pollers and migrations touch nobody else's."""
    async with scratch_database(stack, "taskevents_image") as url:
        yield url


class Container:
    """The service as the image's entrypoint runs it. As root (CI), like in a container: PID 1
    of a PID namespace of its own, as the image's user (unshare + setpriv). Otherwise as a
    plain child process of the current user."""

    def __init__(
        self, command: list[str], env: dict[str, str], user: str | None, cwd: Path, log: str
    ) -> None:
        executable = shutil.which(command[0], path=env["PATH"])
        assert executable, f"{command[0]} is not on the image's PATH {env['PATH']}"
        argv = [executable, *command[1:]]
        self.as_pid_1 = user is not None and os.geteuid() == 0
        if user is not None and self.as_pid_1:
            uid, _, gid = user.partition(":")
            argv = [
                "unshare", "--pid", "--fork", "--kill-child",
                "setpriv", f"--reuid={uid}", f"--regid={gid or uid}", "--clear-groups", "--",
                *argv,
            ]  # fmt: skip
        self.log_file = cwd / log
        with self.log_file.open("wb") as output:
            self.process = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT
            )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"exited {self.process.returncode}:\n{self.log_file.read_text()}")

    def terminate(self) -> None:
        """SIGTERM to the service itself, as the kubelet sends it to the container's PID 1."""
        pid = self.process.pid
        if self.as_pid_1:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            assert len(children) == 1, f"unshare has children {children}"
            pid = int(children[0])
        os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # unshare --kill-child takes the service with it
            self.process.wait()


@pytest.mark.parametrize("app_id", SERVICES)
async def test_image_installs_starts_answers_health_and_stops_on_sigterm(
    app_id: str, stack: Stack, own_database: str, scratch_root: Path
) -> None:
    build_stage, runtime_stage = dockerfile(app_id)[1:]
    image = ImageRoot(scratch_root / "root")
    started = time.monotonic()
    await asyncio.to_thread(build, image, build_stage)
    build_seconds = time.monotonic() - started
    env, command, user = runtime_env(image, runtime_stage)
    assert user is not None
    venv = image.path("/app/.venv")
    # Only this service and the shared library were installed, as wheels.
    installed = {
        p.name.split("-")[0] for p in venv.glob("lib/python3.11/site-packages/*.dist-info")
    }
    others = {s.replace("-", "_") for s in SERVICES if s != app_id}
    assert app_id.replace("-", "_") in installed
    assert not installed & others, f"another service is installed: {installed & others}"
    assert not list(venv.glob("lib/python3.11/site-packages/*.pth")), "an editable install"

    make_read_only(image.root)
    before = tree_listing(image.root)
    workdir = scratch_root / "tmp"  # the pod's writable /tmp (an emptyDir)
    workdir.mkdir()
    workdir.chmod(0o1777)
    port = free_port()
    env |= {
        "APP_PORT": str(port),
        "HOME": "/nonexistent",
        "TMPDIR": str(workdir),
        "DATABASE_URL": own_database,
        # The shared stack's passwords are development placeholders, refused in production.
        "TASKEVENTS_ENV": "development",
        "DAPR_HTTP_PORT": str(free_port()),  # no sidecar here: /ready must name it
        "NOTIFY_SMTP_HOST": stack.smtp_host,
        "NOTIFY_SMTP_PORT": str(stack.smtp_port),
    }
    if app_id == "audit-log-service":
        # The migration Job: the same entrypoint with `migrate`, as the same user.
        job = Container([*command[:1], "migrate"], env, user, workdir, "migrate.log")
        code = await asyncio.to_thread(job.process.wait, 120)
        assert code == 0, job.log_file.read_text()
    container = Container(command, env, user, workdir, "service.log")

    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5.0) as http:

            async def healthy() -> dict[str, Any] | None:
                try:
                    response = await http.get(f"{url}/health")
                except httpx.TransportError:
                    return None
                return response.json() if response.status_code == 200 else None

            health = await eventually(
                healthy, timeout=60, what=f"{app_id} /health", check=container.check_alive
            )
            assert health["service"] == app_id
            ready = await http.get(f"{url}/ready")
            # Database and SMTP answer from the image's settings; only the sidecar is absent.
            assert ready.status_code == 503
            assert set(ready.json()["failing"]) == {"sidecar"}, ready.text
            # Package data made it into the wheel: the OpenAPI page, the live page.
            assert (await http.get(f"{url}/docs")).status_code == 200
            if app_id == "ops-console":
                # Its templates and script: the login shell and the page script.
                login = await http.get(f"{url}/login")
                assert login.status_code == 200, login.text
                assert "dev-token-button" in login.text
                assert (await http.get(f"{url}/static/console.js")).status_code == 200
            if app_id == "websocket-service":
                live_page = await http.get(f"{url}/")
                assert live_page.status_code == 200
                assert "text/html" in live_page.headers["content-type"]

        container.terminate()
        stopping = time.monotonic()
        code = await asyncio.to_thread(container.process.wait, GRACE_SECONDS)
        log = container.log_file.read_text()
        assert "Application shutdown complete" in log, log
        if container.as_pid_1:
            assert code == 0, log
        else:
            # uvicorn re-raises the SIGTERM it handled once shutdown is complete; only a
            # PID 1 (the exec-form entrypoint in the pod) ignores it and exits with 0.
            assert code in (0, -signal.SIGTERM), log
        assert time.monotonic() - stopping < GRACE_SECONDS
    finally:
        container.kill()
    # Nothing was written into the image's file system (a read-only root in the pod).
    assert tree_listing(image.root) == before
    print(f"{app_id}: image steps replayed in {build_seconds:.1f}s")  # noqa: T201
