"""The real infrastructure the suite runs against: started once per session through the
same scripts `make run` uses (idempotent), reused when already up."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
STATE = Path(
    os.environ.get("TASKEVENTS_STATE")
    or Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "taskevents"
)
# Unique per session: consumer groups, ids and artifacts never collide with another run.
RUN_ID = uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class Stack:
    kafka_brokers: str
    database_url: str
    smtp_host: str
    smtp_port: int
    mail_dir: Path
    daprd: str
    log_dir: Path
    # Sidecars talk mTLS with certificates from the stack's Sentry (scripts/sentry.sh).
    sentry_address: str
    trust_anchors: str
    # Jaeger (scripts/jaeger.sh): OTLP/gRPC in, the query API out.
    otlp_endpoint: str
    jaeger_url: str
    # Both tokens are on in every test, as in `make run` and the chart: the app's API asks
    # daprd for APP_API_TOKEN, daprd's API asks callers for DAPR_API_TOKEN.
    dapr_api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    app_api_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))


# The shared stack's Jaeger (scripts/jaeger.sh), for every harness's sidecars and services.
OTLP_ENDPOINT = f"http://127.0.0.1:{os.environ.get('JAEGER_OTLP_GRPC_PORT', '4317')}"
JAEGER_URL = f"http://127.0.0.1:{os.environ.get('JAEGER_UI_PORT', '16686')}"


def ensure_stack() -> Stack:
    env = {**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    _run(["bash", str(SCRIPTS / "stack.sh"), "up"], env)
    bin_dir = _run(["bash", str(SCRIPTS / "dapr-runtime.sh")], env).strip().splitlines()[-1]
    daprd = str(Path(bin_dir) / "daprd")
    log_dir = STATE / "test-logs" / RUN_ID
    log_dir.mkdir(parents=True, exist_ok=True)
    return Stack(
        kafka_brokers=os.environ.get("KAFKA_BROKERS", "127.0.0.1:9092"),
        database_url=os.environ.get(
            "TEST_DATABASE_URL", "postgresql://taskevents:taskevents@127.0.0.1:5432/taskevents_test"
        ),
        smtp_host="127.0.0.1",
        smtp_port=int(os.environ.get("SMTP_PORT", "1025")),
        mail_dir=Path(os.environ.get("MAILSINK_DIR", STATE / "mail")),
        daprd=daprd,
        log_dir=log_dir,
        sentry_address=f"127.0.0.1:{os.environ.get('SENTRY_PORT', '50100')}",
        trust_anchors=(STATE / "sentry" / "credentials" / "ca.crt").read_text(),
        otlp_endpoint=OTLP_ENDPOINT,
        jaeger_url=JAEGER_URL,
    )


def _run(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def scratch_database(stack: Stack, prefix: str) -> AsyncIterator[str]:
    """A database of its own on the shared server, dropped afterwards: for tests whose
    service would otherwise touch rows of everybody else's (pollers, migrations)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(stack.database_url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        admin = await asyncpg.connect(stack.database_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclass
class OwnPostgres:
    """A Postgres cluster of a test module's own (scripts/postgres.sh with a state directory
    and port of its own), which its tests may stop, start and reconfigure."""

    port: int
    state: Path

    @property
    def url(self) -> str:
        return f"postgresql://taskevents:taskevents@127.0.0.1:{self.port}/taskevents"

    def run(self, command: str) -> None:
        env = {**os.environ, "PGPORT": str(self.port), "TASKEVENTS_STATE": str(self.state)}
        env.pop("DATABASE_URL", None)
        result = subprocess.run(
            ["bash", str(SCRIPTS / "postgres.sh"), command],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"postgres.sh {command} failed:\n{result.stderr[-3000:]}")
