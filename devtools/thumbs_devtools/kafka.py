"""Local Kafka brokers (KRaft, each a combined broker and controller, all voters) on 127.0.0.1."""
from __future__ import annotations

import base64
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from services.common.kafka import client_config
from services.common.settings import Settings

from . import tls
from .cassandra import server_material
from .java import java_binary
from .maven import cached_lib
from .server import Node, Say, port_open
from .versions import SERVERS_DIR

if TYPE_CHECKING:
    pass

HOST = "127.0.0.1"
# thumbnail.fetched records carry a source image (up to 20 MiB) and its event header.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024
JVM_FLAGS = (
    "-Xms512m", "-Xmx512m", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
    "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
    # Log4j's own hook would close the log before Kafka's shutdown hook has logged its last steps.
    "-Dlog4j2.shutdownHookEnabled=false",
)


class FormatError(RuntimeError):
    """kafka.tools.StorageTool could not format the log directory."""


def base_port(settings: Settings) -> int:
    """The port of the first bootstrap address: broker N listens on base + 2(N-1), its controller on the next."""
    first = settings.kafka_bootstrap.split(",")[0].strip()
    return int(first.rsplit(":", 1)[1]) if ":" in first else 9092


def broker_port(settings: Settings, node_id: int) -> int:
    return base_port(settings) + 2 * (node_id - 1)


@dataclass(frozen=True)
class Kafka(Node):
    kind: ClassVar[str] = "kafka"
    main_class: ClassVar[str] = "kafka.Kafka"
    ready_timeout: ClassVar[float] = 90.0

    @property
    def main_log(self) -> Path:
        return self.layout.logs / "server.log"

    @property
    def port(self) -> int:
        return broker_port(self.settings, self.node_id)

    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def prepare(self, say: Say) -> list[str]:
        lib = self._lib(say)
        self.layout.create()
        properties, log4j = self.layout.conf / "server.properties", self.layout.conf / "log4j2.properties"
        material = server_material(self.settings, self.topology)
        properties.write_text(server_properties(base_port(self.settings), self.layout.data, self.node_id,
                                                self.topology.kafka_brokers, material))
        properties.chmod(0o600)  # holds the key store and SCRAM passwords when secure
        log4j.write_text(log4j2_properties(self.main_log))
        if not (self.layout.data / "meta.properties").exists():
            say(f"{self.name}: formatting {self.layout.data} (first start only)")
            self._format(lib, properties, log4j, material)
        return [java_binary(), *JVM_FLAGS, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*",
                self.main_class, str(properties)]

    def answers(self) -> bool:
        if not port_open(HOST, self.port):
            return False
        material = server_material(self.settings, self.topology)
        # The probe connects as the service will: its own client settings, pointed at this broker alone.
        return metadata_answers(tls.as_settings({"KAFKA_BOOTSTRAP": self.address(),
                                                 **(tls.client_settings(material) if material else {})}))

    def _lib(self, say: Say) -> Path:
        cache = self.settings.state_dir / "cache" / f"kafka-{self.versions.kafka}"
        if not (cache / "lib").is_dir():
            say(f"kafka: resolving Kafka {self.versions.kafka} jars with Maven into {cache} (first start only)")
        props = {"kafka.version": self.versions.kafka, "log4j.version": self.versions.kafka_log4j}
        return cached_lib(cache, SERVERS_DIR / "kafka" / "pom.xml", props)

    def _format(self, lib: Path, properties: Path, log4j: Path, material: tls.Material | None = None) -> None:
        argv = [java_binary(), "-Xmx256m", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*",
                "kafka.tools.StorageTool", "format", "-t", self.topology.kafka_cluster_id, "-c", str(properties)]
        if material:
            # SCRAM credentials live in the metadata log; formatting writes the first user's there before any start.
            argv += ["--add-scram", f"{tls.SASL_MECHANISM}=[name={tls.KAFKA_USER},password={material.kafka_password}]"]
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            output = done.stdout + done.stderr
            if material:  # a rejected --add-scram may be echoed back
                output = output.replace(material.kafka_password, "********")
            raise FormatError(f"formatting Kafka storage failed ({done.returncode}):\n{output}")


def cluster_id() -> str:
    """What `kafka-storage.sh random-uuid` prints (22 base64url chars), without starting a JVM for it."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka rejects ids that look like command-line flags
            return text


def server_properties(base: int, data: Path, node_id: int = 1, brokers: int = 1,
                      material: tls.Material | None = None) -> str:
    """Broker `node_id` of `brokers`; every broker is also a controller and a voter of the quorum.

    With `material`, clients and brokers talk SASL_SSL (SCRAM) on the broker port; see secure_properties.
    """
    port = base + 2 * (node_id - 1)
    controller = port + 1
    voters = ",".join(f"{n}@{HOST}:{base + 2 * (n - 1) + 1}" for n in range(1, brokers + 1))
    replicas = min(brokers, 3)
    min_isr = 2 if replicas >= 3 else 1
    values = {
        "process.roles": "broker,controller",
        "node.id": str(node_id),
        # Static quorum: the storage is then formatted without --standalone.
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": "6",
        # The pipeline topics come from `thumbs topics`; this spares ad-hoc tools (kcat, tests) a create step.
        "auto.create.topics.enable": "true",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # A dead broker's partitions get new leaders after 3 s instead of 9 (measured: 3.9 s vs 9.2 s
        # from SIGKILL to the next acks=all write).
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "1000",
        # One partition instead of 50 each: much faster first consumer-group and transaction use.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
        "num.network.threads": "2",
        "num.io.threads": "2",
    }
    if material:
        values |= secure_properties(port, controller, material)
    return "".join(f"{key}={value}\n" for key, value in values.items())


def secure_properties(port: int, controller: int, material: tls.Material) -> dict[str, str]:
    """SASL_SSL with SCRAM for clients and between brokers; the controller listener stays plain, on loopback only."""
    jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{tls.KAFKA_USER}" '
            f'password="{material.kafka_password}";')
    return {
        "listeners": f"SASL_SSL://{HOST}:{port},CONTROLLER://{HOST}:{controller}",
        "advertised.listeners": f"SASL_SSL://{HOST}:{port}",
        "inter.broker.listener.name": "SASL_SSL",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms": tls.SASL_MECHANISM,
        "sasl.mechanism.inter.broker.protocol": tls.SASL_MECHANISM,
        f"listener.name.sasl_ssl.{tls.SASL_MECHANISM.lower()}.sasl.jaas.config": jaas,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(material.keystore),
        "ssl.keystore.password": material.store_password,
        "ssl.key.password": material.store_password,
        "ssl.truststore.type": "PKCS12",
        "ssl.truststore.location": str(material.truststore),
        "ssl.truststore.password": material.store_password,
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # Raft votes and broker registrations arrive over the plain controller listener as User:ANONYMOUS;
        # without it the quorum never forms (AuthorizerNotReadyException on VOTE).
        "super.users": f"User:{tls.KAFKA_USER};User:ANONYMOUS",
    }


def log4j2_properties(log_file: Path) -> str:
    return f"""\
# The Maven closure has no log4j2.yaml; this one sends everything to one rolling file.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def metadata_answers(settings: Settings, timeout: float = 5.0) -> bool:
    """True when the brokers of `settings` answer a metadata request (what every client does first)."""
    from confluent_kafka.admin import AdminClient  # imported late: only probes need it

    # log_level 0 keeps librdkafka quiet about refused connections while the broker boots.
    admin = AdminClient({**client_config(settings), "log_level": 0, "socket.timeout.ms": int(timeout * 1000)})
    try:
        admin.list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure means "not answering yet"
        return False
    return True
