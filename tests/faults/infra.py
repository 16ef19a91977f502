"""The fault suite's own backing services: a Kafka broker, a Postgres cluster and an SMTP sink
on free ports with a state directory under a temporary directory, started through the same
scripts as `make run` (scripts/kafka.sh, postgres.sh, smtp.sh honour KAFKA_PORT, PGPORT,
SMTP_PORT, MAILSINK_DIR and TASKEVENTS_STATE). The suite restarts and stops them; the shared
stack other sessions use is never touched. Only Dapr's Sentry (the certificate authority) is
the shared one: the suite does not fault it. Plus an SMS sink: an HTTP server that records
what notification-service's webhook SMS provider posts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.stack import (
    JAEGER_URL,
    OTLP_ENDPOINT,
    ROOT,
    RUN_ID,
    SCRIPTS,
    STATE,
    Stack,
    free_port,
)


@dataclass
class OwnInfra:
    state: Path
    kafka_port: int = field(default_factory=free_port)
    kafka_controller_port: int = field(default_factory=free_port)
    pg_port: int = field(default_factory=free_port)
    smtp_port: int = field(default_factory=free_port)

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://taskevents:taskevents@127.0.0.1:{self.pg_port}/taskevents"

    @property
    def mail_dir(self) -> Path:
        return self.state / "mail"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "TASKEVENTS_STATE": str(self.state),
            "KAFKA_PORT": str(self.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(self.kafka_controller_port),
            "KAFKA_HEAP_OPTS": "-Xms128m -Xmx512m",
            "PGPORT": str(self.pg_port),
            "SMTP_PORT": str(self.smtp_port),
            "MAILSINK_HTTP_PORT": "0",
            "MAILSINK_DIR": str(self.mail_dir),
            "MAILSINK_REJECT": "",
            "PYTHON": str(ROOT / ".venv" / "bin" / "python"),
        }
        for name in ("KAFKA_BROKERS", "DATABASE_URL"):
            env.pop(name, None)  # never an external broker or database: ours
        return env

    def script(self, name: str, *args: str) -> str:
        result = subprocess.run(
            ["bash", str(SCRIPTS / name), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    # The faults.
    def kafka_stop(self) -> None:
        self.script("kafka.sh", "stop")

    def kafka_start(self) -> None:
        self.script("kafka.sh", "start")

    def postgres_stop(self) -> None:
        self.script("postgres.sh", "stop")

    def postgres_start(self) -> None:
        self.script("postgres.sh", "start")

    def smtp_stop(self) -> None:
        self.script("smtp.sh", "stop")

    def smtp_start(self) -> None:
        self.script("smtp.sh", "start")

    def up(self) -> None:
        self.script("kafka.sh", "ensure")
        self.script("kafka.sh", "start", "--no-wait")
        self.script("postgres.sh", "ensure")
        self.script("postgres.sh", "start")
        self.script("smtp.sh", "start")
        self.script("kafka.sh", "wait")
        self.script("kafka.sh", "topics")

    def down(self) -> None:
        errors = []
        for name in ("smtp.sh", "kafka.sh", "postgres.sh"):
            try:
                self.script(name, "stop")
            except RuntimeError as error:
                errors.append(str(error))
        if errors:
            raise RuntimeError("\n".join(errors))


def make_infra() -> OwnInfra:
    state = Path(tempfile.mkdtemp(prefix=f"taskevents-faults-{RUN_ID}-"))
    # Postgres runs as the `postgres` user when we are root: it must reach its directory.
    state.chmod(0o755)
    return OwnInfra(state=state)


def remove_infra(infra: OwnInfra) -> None:
    shutil.rmtree(infra.state, ignore_errors=True)


def suite_stack(infra: OwnInfra, log_dir: Path) -> Stack:
    """The harness's Stack pointing at our broker, database and sink, with the shared Sentry."""
    env = {**os.environ, "PYTHON": str(ROOT / ".venv" / "bin" / "python")}
    result = subprocess.run(
        ["bash", str(SCRIPTS / "sentry.sh"), "start"], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"sentry.sh start failed:\n{result.stderr[-3000:]}")
    runtime = subprocess.run(
        ["bash", str(SCRIPTS / "dapr-runtime.sh")], env=env, capture_output=True, text=True
    )
    if runtime.returncode != 0:
        raise RuntimeError(f"dapr-runtime.sh failed:\n{runtime.stderr[-3000:]}")
    bin_dir = runtime.stdout.strip().splitlines()[-1]
    log_dir.mkdir(parents=True, exist_ok=True)
    return Stack(
        kafka_brokers=infra.brokers,
        database_url=infra.database_url,
        smtp_host="127.0.0.1",
        smtp_port=infra.smtp_port,
        mail_dir=infra.mail_dir,
        daprd=str(Path(bin_dir) / "daprd"),
        log_dir=log_dir,
        sentry_address=f"127.0.0.1:{os.environ.get('SENTRY_PORT', '50100')}",
        trust_anchors=(STATE / "sentry" / "credentials" / "ca.crt").read_text(),
        otlp_endpoint=OTLP_ENDPOINT,
        jaeger_url=JAEGER_URL,
    )


class SmsSink:
    """Records every SMS posted by the webhook provider (JSON lines, in arrival order)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.port = free_port()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                sink.received.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sms"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
