"""A throw-away Kafka broker that only speaks SASL_SSL (SCRAM-SHA-512 over TLS), for the
transport tests: KRaft combined mode from the same Maven Central jars as scripts/kafka.sh,
on free ports, with a data directory, a CA, a server certificate and SCRAM users of its own,
all made by the fixture and removed with it. The shared broker is never touched."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from pydantic import SecretStr

from taskevents.kafka import KafkaSettings
from tests.support.certificates import CertificateAuthority, issue_server_certificate, make_ca
from tests.support.stack import SCRIPTS, free_port
from tests.support.waiting import eventually

KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.3.1")
CACHE = Path(
    os.environ.get("TASKEVENTS_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "taskevents"
)
LIBS = CACHE / "kafka" / KAFKA_VERSION / "libs"
MECHANISM = "SCRAM-SHA-512"
BROKER_USER = "broker"  # the broker's own login on its SASL_SSL listener (inter-broker)
START_TIMEOUT_SECONDS = 90.0
TOPIC_PARTITIONS = 6  # as the shared broker's: the harness's probes go round six partitions


@dataclass
class SaslKafkaBroker:
    directory: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    user: str = "taskevents"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    broker_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    process: subprocess.Popen[bytes] | None = None
    ca: CertificateAuthority | None = None
    launched_at: float = 0.0
    start_seconds: float = 0.0  # from launching the JVM to the first answered SASL request

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka.log"

    @property
    def ca_file(self) -> Path:
        assert self.ca is not None, "the broker was not prepared"
        return self.ca.cert_file

    def client_settings(self, *, password: str | None = None) -> KafkaSettings:
        return KafkaSettings(
            brokers=self.brokers,
            security_protocol="SASL_SSL",
            sasl_mechanism=MECHANISM,
            sasl_username=self.user,
            sasl_password=SecretStr(password or self.password),
            ca_file=self.ca_file,
        )

    def daprd_env(
        self, *, password: str | None = None, ca_pem: str | None = None
    ) -> dict[str, str]:
        """What the sidecar's secret store (envstore, prefix TASKEVENTS_) hands the
        components rendered by `use_sasl_ssl`."""
        return {
            "TASKEVENTS_KAFKA_BROKERS": self.brokers,
            "TASKEVENTS_KAFKA_SASL_USERNAME": self.user,
            "TASKEVENTS_KAFKA_SASL_PASSWORD": password or self.password,
            "TASKEVENTS_KAFKA_CA_CERT": ca_pem or self.ca_file.read_text(),
        }

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # Set-up -------------------------------------------------------------------------------

    def prepare(self) -> None:
        if not (LIBS / ".complete").is_file():
            raise RuntimeError(
                f"the Kafka jars are not in {LIBS}: run 'scripts/kafka.sh ensure' "
                "(the shared stack's start does it)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = make_ca(self.directory / "tls", "kafka-test")
        server = issue_server_certificate(self.ca, self.directory / "tls", "broker")
        # A PEM key store is one file: the private key (PKCS#8, unencrypted: no
        # ssl.key.password), then the certificate chain.
        keystore = self.directory / "tls" / "broker-keystore.pem"
        keystore.write_text(server.key_file.read_text() + server.cert_file.read_text())
        keystore.chmod(0o600)
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{self.broker_password}";'
        )
        (self.directory / "server.properties").write_text(
            f"""process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}
listeners=SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms={MECHANISM}
sasl.mechanism.inter.broker.protocol={MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={self.ca.cert_file}
ssl.client.auth=none
log.dirs={self.directory / "data"}
num.network.threads=2
num.io.threads=2
num.partitions=1
offsets.topic.num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""
        )
        (self.directory / "log4j2.properties").write_text(
            """status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
"""
        )
        # The SCRAM credentials go into the metadata log when the storage is formatted, so
        # the broker can authenticate its own inter-broker login from its first second.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = secrets.token_urlsafe(16)[:22]
        result = subprocess.run(
            ["bash", str(SCRIPTS / "kafka.sh"), "tool", "kafka.tools.StorageTool", "format",
             "--standalone", "-t", cluster_id, "-c", str(self.directory / "server.properties"),
             "--add-scram", f"{MECHANISM}=[name={BROKER_USER},password={self.broker_password}]",
             "--add-scram", f"{MECHANISM}=[name={self.user},password={self.password}]"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"formatting the KRaft storage failed:\n{result.stderr[-3000:]}")

    def launch(self) -> None:
        classpath = ":".join(str(jar) for jar in sorted(LIBS.glob("*.jar")))
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                ["java", "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Xshare:auto", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
                 f"-Dkafka.logs.dir={self.directory}", "-cp", classpath, "kafka.Kafka",
                 str(self.directory / "server.properties")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.launched_at = time.monotonic()

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"the SASL_SSL Kafka broker exited; its log:\n{self.tail()}")

    async def wait_answering(self) -> None:
        """Until a SASL_SSL client is served, then the task topics exist."""

        async def answering() -> bool:
            if not _port_open(self.port):
                return False
            admin = AIOKafkaAdminClient(
                **self.client_settings().client_options(), request_timeout_ms=5000
            )
            try:
                await admin.start()
                existing = set(await admin.list_topics())
                self.start_seconds = time.monotonic() - self.launched_at
                wanted = [t for t in ("task-events", "task-events-dlq") if t not in existing]
                if wanted:
                    await admin.create_topics(
                        [NewTopic(t, TOPIC_PARTITIONS, replication_factor=1) for t in wanted]
                    )
                return True
            except (KafkaError, OSError):
                return False
            finally:
                await admin.close()

        await eventually(
            answering,
            timeout=START_TIMEOUT_SECONDS,
            what=f"the SASL_SSL broker answering (its log: {self.log_file})",
            check=self.check_alive,
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# The settings dapr-components/kafka-pubsub.yaml documents for a SASL_SSL broker, each read
# from the secret store like the broker list.
def _secret(field: str, name: str) -> dict[str, Any]:
    return {"name": field, "secretKeyRef": {"name": name, "key": name}}


SASL_SSL_METADATA: list[dict[str, Any]] = [
    {"name": "authType", "value": "password"},
    {"name": "saslMechanism", "value": "SHA-512"},
    _secret("saslUsername", "KAFKA_SASL_USERNAME"),
    _secret("saslPassword", "KAFKA_SASL_PASSWORD"),
    _secret("caCert", "KAFKA_CA_CERT"),
]


def use_sasl_ssl(resources: Path) -> int:
    """Rewrite every Kafka pub/sub component rendered for a sidecar to SASL_SSL; returns how
    many were rewritten."""
    rewritten = 0
    for path in resources.glob("*.yaml"):
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        changed = False
        for document in documents:
            if document.get("kind") != "Component" or document["spec"]["type"] != "pubsub.kafka":
                continue
            names = {m["name"] for m in SASL_SSL_METADATA}
            kept = [m for m in document["spec"]["metadata"] if m["name"] not in names]
            document["spec"]["metadata"] = kept + SASL_SSL_METADATA
            changed = True
            rewritten += 1
        if changed:
            path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return rewritten
