"""Run apps beside daprd sidecars on one machine, from a Dapr multi-app run file.

`dapr run -f dapr.yaml` does this when the dapr CLI is installed; the CLI is not always
available (it is not served by the Go module proxy), so `make run` falls back to this
runner, which understands the subset of the run-file format that dapr.yaml uses. The
test harness uses the same classes to start sidecars and services."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from taskevents.logging import configure_logging, get_logger

log = get_logger(__name__)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0


class ProcessDiedError(RuntimeError):
    pass


@dataclass
class ManagedProcess:
    """A child process with its output in a log file; it dies with its parent."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== {time.strftime('%F %T')} {shlex.join(self.argv)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ProcessDiedError(
                f"{self.name} exited with code {self.process.returncode}; "
                f"the end of {self.log_path}:\n{self.tail()}"
            )

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class AppSpec:
    """One app of a run file, with its sidecar's ports."""

    app_id: str
    app_dir: Path
    command: list[str]
    app_port: int | None
    dapr_http_port: int
    dapr_grpc_port: int
    metrics_port: int
    resources_paths: list[Path]
    config_path: Path | None
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "info"
    health_path: str | None = "/health"
    # Sentry's address when the sidecar talks mTLS to the others (its configuration's
    # spec.mtls.enabled); daprd then also needs DAPR_TRUST_ANCHORS in its environment.
    sentry_address: str | None = None

    def daprd_argv(self, daprd: str) -> list[str]:
        argv = [
            daprd,
            "--app-id", self.app_id,
            "--dapr-http-port", str(self.dapr_http_port),
            "--dapr-grpc-port", str(self.dapr_grpc_port),
            "--metrics-port", str(self.metrics_port),
            "--log-level", self.log_level,
            "--app-protocol", "http",
            # Placement and scheduler are not used: pub/sub, state and invocation only.
            "--placement-host-address", "",
        ]  # fmt: skip
        if self.app_port is not None:
            argv += ["--app-port", str(self.app_port)]
        for path in self.resources_paths:
            argv += ["--resources-path", str(path)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        if self.sentry_address is not None:
            argv += ["--enable-mtls", "--sentry-address", self.sentry_address]
        return argv

    def app_env(self) -> dict[str, str]:
        env = {
            "APP_ID": self.app_id,
            "DAPR_HTTP_PORT": str(self.dapr_http_port),
            "DAPR_GRPC_PORT": str(self.dapr_grpc_port),
            **self.env,
        }
        if self.app_port is not None:
            env["APP_PORT"] = str(self.app_port)
        return env


@dataclass
class RunningApp:
    spec: AppSpec
    sidecar: ManagedProcess
    app: ManagedProcess | None

    @property
    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.app, self.sidecar) if p is not None]

    def check_alive(self) -> None:
        for process in self.processes:
            process.check_alive()

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Wait for the app's health endpoint and the sidecar's, failing fast with the log
        of whichever process died."""
        deadline = time.monotonic() + timeout
        urls = [f"http://127.0.0.1:{self.spec.dapr_http_port}/v1.0/healthz"]
        if self.app is not None and self.spec.app_port and self.spec.health_path:
            urls.insert(0, f"http://127.0.0.1:{self.spec.app_port}{self.spec.health_path}")
        for url in urls:
            while not _answers(url):
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.spec.app_id}: {url} did not answer within {timeout:.0f}s\n"
                        + "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)
                    )
                time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        # The sidecar first, so that nothing is delivered to an app that is going away.
        self.sidecar.stop(sig)
        if self.app is not None:
            self.app.stop(sig)


def start_app(
    spec: AppSpec, *, daprd: str, log_dir: Path, daprd_env: Mapping[str, str]
) -> RunningApp:
    app = None
    if spec.command:
        app = ManagedProcess(
            name=f"{spec.app_id} (app)",
            argv=spec.command,
            log_path=log_dir / f"{spec.app_id}_app.log",
            env=spec.app_env(),
            cwd=spec.app_dir,
        )
        app.start()
    sidecar = ManagedProcess(
        name=f"{spec.app_id} (daprd)",
        argv=spec.daprd_argv(daprd),
        log_path=log_dir / f"{spec.app_id}_daprd.log",
        env=dict(daprd_env),
        cwd=spec.app_dir,
    )
    sidecar.start()
    return RunningApp(spec=spec, sidecar=sidecar, app=app)


def mtls_enabled(config_path: Path | None) -> bool:
    """Whether a Dapr Configuration file turns mTLS on (spec.mtls.enabled), which is how
    `dapr run` decides to start daprd with --enable-mtls."""
    if config_path is None:
        return False
    document = yaml.safe_load(config_path.read_text()) or {}
    return bool(((document.get("spec") or {}).get("mtls") or {}).get("enabled"))


def load_run_file(path: Path, *, sentry_address: str | None = None) -> list[AppSpec]:
    """Read a Dapr multi-app run file (the fields dapr.yaml uses). Apps whose configuration
    turns mTLS on get `sentry_address`, which is then required."""
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    if not document or not document.get("version"):
        raise ValueError(f"{path}: a run file needs a `version`")
    base = path.parent
    common: dict[str, Any] = document.get("common") or {}
    specs = []
    for entry in document.get("apps") or []:
        merged = {**common, **entry, "env": {**common.get("env", {}), **entry.get("env", {})}}
        app_dir = (base / merged["appDirPath"]).resolve()

        def resolve(value: str, *, in_common: bool, root: Path = app_dir) -> Path:
            return ((base if in_common else root) / value).resolve()

        resources = [
            resolve(p, in_common="resourcesPaths" not in entry)
            for p in merged.get("resourcesPaths", [])
        ]
        config = merged.get("configFilePath")
        config_path = resolve(config, in_common="configFilePath" not in entry) if config else None
        mtls = mtls_enabled(config_path)
        if mtls and not sentry_address:
            raise ValueError(
                f"{config_path} turns mTLS on: give Sentry's address (--sentry-address or "
                "SENTRY_ADDRESS; `scripts/stack.sh up` starts one)"
            )
        specs.append(
            AppSpec(
                app_id=merged.get("appID") or app_dir.name,
                app_dir=app_dir,
                command=[str(c) for c in merged.get("command", [])],
                app_port=merged.get("appPort"),
                dapr_http_port=int(merged["daprHTTPPort"]),
                dapr_grpc_port=int(merged["daprGRPCPort"]),
                metrics_port=int(merged["metricsPort"]),
                resources_paths=resources,
                config_path=config_path,
                env={k: str(v) for k, v in merged["env"].items()},
                log_level=merged.get("logLevel", "info"),
                health_path=merged.get("appHealthCheckPath", "/health"),
                sentry_address=sentry_address if mtls else None,
            )
        )
    return specs


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310 - loopback
            return 200 <= int(response.status) < 300
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running(
    specs: Sequence[AppSpec], *, daprd: str, log_dir: Path, daprd_env: Mapping[str, str]
) -> Iterator[list[RunningApp]]:
    apps: list[RunningApp] = []
    try:
        for spec in specs:
            apps.append(start_app(spec, daprd=daprd, log_dir=log_dir, daprd_env=daprd_env))
        for app in apps:
            app.wait_ready()
        yield apps
    finally:
        for app in reversed(apps):
            app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskevents_cli.devrun", description=__doc__)
    parser.add_argument("-f", "--run-file", type=Path, default=Path("dapr.yaml"))
    parser.add_argument("--daprd", default=str(Path.home() / ".dapr" / "bin" / "daprd"))
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path, help="written while running, for `make stop`")
    parser.add_argument(
        "--sentry-address",
        default=os.environ.get("SENTRY_ADDRESS"),
        help="Sentry (mTLS certificates) for sidecars whose configuration turns mTLS on "
        '(default $SENTRY_ADDRESS; `eval "$(scripts/sentry.sh env)"` sets it and '
        "DAPR_TRUST_ANCHORS)",
    )
    args = parser.parse_args(argv)
    configure_logging("devrun")
    specs = load_run_file(args.run_file, sentry_address=args.sentry_address)
    if any(s.sentry_address for s in specs) and not os.environ.get("DAPR_TRUST_ANCHORS"):
        parser.error("mTLS is on: DAPR_TRUST_ANCHORS must hold Sentry's root certificate")
    stop = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    if args.pid_file is not None:
        args.pid_file.parent.mkdir(parents=True, exist_ok=True)
        args.pid_file.write_text(f"{os.getpid()}\n")
    try:
        with running(specs, daprd=args.daprd, log_dir=args.log_dir, daprd_env={}) as apps:
            for app in apps:
                log.info(
                    "running",
                    app_id=app.spec.app_id,
                    app=f"http://127.0.0.1:{app.spec.app_port}" if app.spec.app_port else None,
                    dapr_http=app.spec.dapr_http_port,
                    dapr_grpc=app.spec.dapr_grpc_port,
                )
            log.info("all apps are up; Ctrl-C stops them", logs=str(args.log_dir))
            while not stop:
                for app in apps:
                    app.check_alive()
                time.sleep(0.5)
            log.info("stopping")
    except (ProcessDiedError, TimeoutError) as error:
        log.error("an app failed; stopping the others", error=str(error))
        return 1
    finally:
        if args.pid_file is not None:
            args.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
