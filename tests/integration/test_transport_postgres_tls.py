"""Postgres over TLS with `sslmode=verify-full`: a throw-away cluster that accepts TCP
connections only over TLS (`hostssl`), with a server certificate signed by a CA made here.
audit-log-service migrates and serves over it, daprd's Postgres state store saves and reads
over the same connection string, and a client that does not trust the server's certificate
is refused with a certificate error."""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from taskevents_cli.devrun import start_app
from tests.support.certificates import CertificateAuthority, issue_server_certificate, make_ca
from tests.support.cluster import (
    VENV_BIN,
    daprd_env,
    refusal_at_start,
    service_spec,
    start_service,
)
from tests.support.stack import OwnPostgres, Stack, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration


@dataclass
class TlsPostgres:
    db: OwnPostgres
    ca: CertificateAuthority

    def url(self, *, ca_file: Path | None = None, sslmode: str = "verify-full") -> str:
        root = quote(str(ca_file or self.ca.cert_file), safe="/")
        return f"{self.db.url}?sslmode={sslmode}&sslrootcert={root}"


def _give_to_server(path: Path) -> None:
    """The server runs as `postgres` when the tests run as root; it reads its key only when
    it owns it and nobody else may read it."""
    path.chmod(0o600)
    if os.getuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(path, owner.pw_uid, owner.pw_gid)


@pytest.fixture(scope="module")
def tls_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsPostgres]:
    state = Path(tempfile.mkdtemp(prefix="taskevents-tls-pg-"))
    ca = make_ca(tmp_path_factory.mktemp("pg-ca"), "postgres-test")
    db = OwnPostgres(port=free_port(), state=state)
    try:
        db.run("ensure")
        data = state / "postgres" / "data"
        server = issue_server_certificate(ca, data, "server")
        for path in (server.cert_file, server.key_file):
            _give_to_server(path)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"ssl = on\nssl_cert_file = '{server.cert_file}'\n"
                f"ssl_key_file = '{server.key_file}'\nssl_min_protocol_version = 'TLSv1.2'\n"
            )
        # TCP only over TLS: a client that asks for no encryption finds no pg_hba entry.
        hba = data / "pg_hba.conf"
        hba.write_text(
            "".join(
                "hostssl" + line[len("host") :] if line.startswith("host ") else line
                for line in hba.read_text().splitlines(keepends=True)
            )
        )
        db.run("start")
        yield TlsPostgres(db=db, ca=ca)
    finally:
        try:
            db.run("stop")
        finally:
            shutil.rmtree(state, ignore_errors=True)


def audit_migrate(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url, "TASKEVENTS_ENV": "development", "LOG_JSON": "0"}
    return subprocess.run(
        [str(VENV_BIN / "audit-log-service"), "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def test_the_audit_log_migrates_over_verify_full(tls_postgres: TlsPostgres) -> None:
    result = audit_migrate(tls_postgres.url())

    assert result.returncode == 0, result.stdout + result.stderr
    connection = await asyncpg.connect(tls_postgres.url())
    try:
        encrypted = await connection.fetchval(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        applied = await connection.fetchval("SELECT count(*) FROM audit_schema_migrations")
    finally:
        await connection.close()
    assert encrypted is True
    assert applied >= 1


async def test_without_tls_the_server_refuses(tls_postgres: TlsPostgres) -> None:
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="no encryption"):
        await asyncpg.connect(tls_postgres.url(sslmode="disable"))


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    other = make_ca(tmp_path, "not-the-postgres-ca")

    result = audit_migrate(tls_postgres.url(ca_file=other.cert_file))

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "the database's TLS certificate was refused" in output, output
    assert "CERTIFICATE_VERIFY_FAILED" in output, output


async def test_the_service_and_daprds_state_store_work_over_verify_full(
    stack: Stack, tls_postgres: TlsPostgres
) -> None:
    url = tls_postgres.url()
    spec, consumer = service_spec(stack, "audit-log-service", replica=41, env={"DATABASE_URL": url})
    # Every component scoped to another app is rendered for the test app too: the sidecar
    # loads the state store (state.postgresql v2, pgx), here over the same TLS DSN.
    stack_over_tls = dataclasses.replace(stack, database_url=url)
    service = start_service(stack_over_tls, spec, consumer, replica=41)
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            ready = await http.get(f"{service.url}/ready")
            assert ready.status_code == 200, ready.text

            key, value = f"tls-{uuid.uuid4()}", {"over": "verify-full"}
            state = f"http://127.0.0.1:{service.dapr_http_port}/v1.0/state/statestore"
            headers = {"dapr-api-token": stack.dapr_api_token}
            saved = await http.post(state, json=[{"key": key, "value": value}], headers=headers)
            assert saved.status_code == 204, saved.text
            read = await http.get(f"{state}/{key}", headers=headers)
            assert (read.status_code, read.json()) == (200, value)
    finally:
        service.app.stop()
    connection = await asyncpg.connect(url)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM dapr_state WHERE key LIKE $1", f"%{key}"
        )
    finally:
        await connection.close()
    assert stored == 1


async def test_a_service_that_does_not_trust_the_database_stays_unready_and_says_why(
    stack: Stack, tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    other = make_ca(tmp_path, "not-the-postgres-ca")
    url = tls_postgres.url(ca_file=other.cert_file)
    spec, consumer = service_spec(stack, "audit-log-service", replica=43, env={"DATABASE_URL": url})
    service = start_service(stack, spec, consumer, replica=43)
    try:
        async with httpx.AsyncClient(timeout=10.0) as http:

            async def unready_naming_the_certificate() -> httpx.Response | None:
                ready = await http.get(f"{service.url}/ready")
                assert ready.status_code == 503, ready.text
                return ready if "CERTIFICATE_VERIFY_FAILED" in ready.text else None

            await eventually(
                unready_naming_the_certificate,
                what="/ready naming the refused certificate",
                timeout=20,
                check=service.check_alive,
            )
    finally:
        service.app.stop()


def test_a_sidecar_whose_state_store_does_not_trust_the_server_refuses_to_start(
    stack: Stack, tls_postgres: TlsPostgres, tmp_path: Path
) -> None:
    other = make_ca(tmp_path, "not-the-postgres-ca")
    spec, _ = service_spec(stack, "taskevents-cli", replica=42, with_app=False)
    app = start_app(
        spec,
        daprd=stack.daprd,
        log_dir=stack.log_dir / "taskevents-cli-pg-tls-42",
        daprd_env={
            **daprd_env(stack),
            "TASKEVENTS_DATABASE_URL": tls_postgres.url(ca_file=other.cert_file),
        },
    )
    message = refusal_at_start(app)
    assert "statestore" in message, message
    assert "x509: certificate signed by unknown authority" in message, message
