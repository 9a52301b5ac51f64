"""Local Cassandra 5.0 nodes (one on 127.0.0.1, or a ring on 127.0.0.11, .12, ...), tuned to start fast."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from services.common.cassandra import cluster_options
from services.common.settings import Settings

from . import tls
from .java import java_binary
from .maven import cached_lib
from .server import Node, Say, port_open
from .versions import SERVERS_DIR

if TYPE_CHECKING:
    from .topology import Topology

STORAGE_PORT = 7000
DATACENTER = "dc1"
RING_HOSTS = "127.0.0.{}"  # node N of a ring listens on 127.0.0.1N: every loopback address is local on Linux
JAMM = "jamm-0.4.0.jar"
# conf/jvm17-server.options of Cassandra 5.0: without these, Java 17 refuses its reflective access.
ADD_EXPORTS = (
    "java.base/jdk.internal.misc", "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.management/com.sun.jmx.remote.security", "java.rmi/sun.rmi.registry", "java.rmi/sun.rmi.server",
    "java.sql/java.sql", "java.base/java.lang.ref", "jdk.unsupported/sun.misc",
)
ADD_OPENS = (
    "java.base/java.lang.module", "java.base/jdk.internal.loader", "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect", "java.base/jdk.internal.math", "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar", "jdk.management/com.sun.management.internal", "java.base/sun.nio.ch",
    "java.base/java.io", "java.base/java.lang.reflect", "java.base/java.lang", "java.base/java.util",
    "java.base/java.nio",
)
JVM_FLAGS = (
    "-Xms1G", "-Xmx1G", "-Xss256k", "-XX:+UseG1GC", "-XX:+ParallelRefProcEnabled", "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m", "-XX:MaxGCPauseMillis=300", "-XX:InitiatingHeapOccupancyPercent=70",
    "-XX:+HeapDumpOnOutOfMemoryError", "-XX:+ExitOnOutOfMemoryError", "-XX:+PerfDisableSharedMem", "-ea",
    "-Djava.net.preferIPv4Stack=true", "-Dchronicle.analytics.disable=true", "-Djdk.attach.allowAttachSelf=true",
    "-Dio.netty.tryReflectionSetAccessible=true", "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    # Without it CassandraDaemon closes stdout/stderr, hiding late JVM errors from stdout.log.
    "-Dcassandra-foreground=yes",
    # A single local node has nobody to gossip with. No skip_sync/unsafesystem: with them a SIGKILLed
    # node came back without the keyspace (its commit log never reached the file), which the chaos run caught.
    "-Dcassandra.skip_wait_for_gossip_to_settle=0", "-Dcassandra.ring_delay_ms=1000",
)
# With authentication on, the default superuser is created this long after start-up (Cassandra's default: 10 s).
SECURE_JVM_FLAGS = ("-Dcassandra.superuser_setup_delay_ms=100",)


def secure_jvm_flags(nodes: int) -> tuple[str, ...]:
    # system_auth is created with RF 1 unless told otherwise: in a ring, one dead node would then stop every login.
    return SECURE_JVM_FLAGS + ((f"-Dcassandra.system_auth.default_rf={min(nodes, 3)}",) if nodes > 1 else ())


def node_hosts(settings: Settings, nodes: int) -> list[str]:
    """One node on the first contact point (127.0.0.1 by default); a ring on 127.0.0.11, .12, ..."""
    return [settings.cassandra_hosts[0]] if nodes == 1 else [RING_HOSTS.format(10 + n) for n in range(1, nodes + 1)]


def certificate_hosts(settings: Settings, nodes: int) -> list[str]:
    """Every address a local server is reached at: the brokers' loopback and each Cassandra node's."""
    return list(dict.fromkeys(["127.0.0.1", *node_hosts(settings, nodes)]))


def server_material(settings: Settings, topology: Topology) -> tls.Material | None:
    """The secure servers' certificates and passwords (made on first use); None for plain servers."""
    if not topology.secure:
        return None
    return tls.ensure(tls.directory(settings.state_dir), certificate_hosts(settings, topology.cassandra_nodes))


@dataclass(frozen=True)
class Cassandra(Node):
    kind: ClassVar[str] = "cassandra"
    main_class: ClassVar[str] = "org.apache.cassandra.service.CassandraDaemon"
    ready_timeout: ClassVar[float] = 180.0

    @property
    def main_log(self) -> Path:
        return self.layout.logs / "system.log"

    @property
    def host(self) -> str:
        return node_hosts(self.settings, self.topology.cassandra_nodes)[self.node_id - 1]

    def address(self) -> str:
        return f"{self.host}:{self.settings.cassandra_port}"

    def prepare(self, say: Say) -> list[str]:
        lib = self._lib(say)
        self.layout.create()
        (self.layout.data / "triggers").mkdir(exist_ok=True)
        yaml, logback = self.layout.conf / "cassandra.yaml", self.layout.conf / "logback.xml"
        nodes, material = self.topology.cassandra_nodes, server_material(self.settings, self.topology)
        yaml.write_text(cassandra_yaml(self.settings.cassandra_port, self.layout.data, host=self.host,
                                       seeds=node_hosts(self.settings, nodes), token=ring_token(self.node_id, nodes),
                                       cluster_name=f"thumbs-dev-{nodes}", material=material))
        yaml.chmod(0o600)  # holds the key store password when secure
        (self.layout.conf / "cassandra-rackdc.properties").write_text(f"dc={DATACENTER}\nrack=rack1\n")
        logback.write_text(logback_xml(self.main_log))
        return [
            java_binary(), *JVM_FLAGS, *(secure_jvm_flags(nodes) if material else ()),
            *(flag for module in ADD_EXPORTS for flag in ("--add-exports", f"{module}=ALL-UNNAMED")),
            *(flag for module in ADD_OPENS for flag in ("--add-opens", f"{module}=ALL-UNNAMED")),
            f"-javaagent:{lib / JAMM}",
            f"-Dcassandra.config={yaml.as_uri()}",  # must be a URL, a bare path is rejected
            f"-Dcassandra.logdir={self.layout.logs}",
            f"-Dlogback.configurationFile={logback}",
            f"-Dcassandra.triggers_dir={self.layout.data / 'triggers'}",
            "-cp", f"{self.layout.conf}:{lib}/*", self.main_class,
        ]

    def answers(self) -> bool:
        port = self.settings.cassandra_port
        if not port_open(self.host, port):
            return False
        material = server_material(self.settings, self.topology)
        # The probe connects as the service will (until the default superuser exists, shortly after
        # start-up, a secure node's login fails: not ready yet).
        settings = tls.as_settings({"CASSANDRA_HOSTS": self.host, "CASSANDRA_PORT": str(port),
                                    **(tls.client_settings(material) if material else {})})
        return query_answers(settings, peers=self.topology.cassandra_nodes - 1)

    def _lib(self, say: Say) -> Path:
        cache = self.settings.state_dir / "cache" / f"cassandra-{self.versions.cassandra}"
        if not (cache / "lib").is_dir():
            say(f"cassandra: resolving Cassandra {self.versions.cassandra} jars with Maven into {cache} "
                "(first start only)")
        return cached_lib(cache, SERVERS_DIR / "cassandra" / "pom.xml", {"cassandra.version": self.versions.cassandra})


def ring_token(node_id: int, nodes: int) -> int:
    """Evenly spaced Murmur3 tokens, one per node: a balanced ring without vnodes."""
    return -(2**63) + (node_id - 1) * (2**64 // nodes)


def cassandra_yaml(port: int, data: Path, *, host: str = "127.0.0.1", seeds: list[str] | None = None,
                   token: int = -(2**63), cluster_name: str = "thumbs-dev-1", material: tls.Material | None = None) -> str:
    # Cassandra rejects unknown keys, so this lists only 5.0 names. Every node is a seed: the ring then
    # starts in parallel (a non-seed started beside a not-yet-listening seed gives up on gossip).
    seed_list = ",".join(f"{seed}:{STORAGE_PORT}" for seed in (seeds or [host]))
    return f"""\
cluster_name: {cluster_name}
num_tokens: 1
initial_token: {token}
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
# Reads the datacenter and rack from cassandra-rackdc.properties, as production snitches do.
endpoint_snitch: GossipingPropertyFileSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "{seed_list}"
listen_address: {host}
rpc_address: {host}
storage_port: {STORAGE_PORT}
native_transport_port: {port}
data_file_directories: [{data / 'data'}]
commitlog_directory: {data / 'commitlog'}
hints_directory: {data / 'hints'}
saved_caches_directory: {data / 'saved_caches'}
commitlog_sync: group
commitlog_sync_group_window: 10ms
# The largest mutation is half a segment; 32 MiB keeps room for big thumbnails.
commitlog_segment_size: 32MiB
auto_snapshot: false
concurrent_compactors: 1
""" + (secure_yaml(material) if material else "")


def secure_yaml(material: tls.Material) -> str:
    """Logins and permissions (roles in system_auth), and TLS on the native port with the local CA's certificate."""
    return f"""\
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
client_encryption_options:
  enabled: true
  optional: false
  keystore: {material.keystore}
  keystore_password: "{material.store_password}"
  truststore: {material.truststore}
  truststore_password: "{material.store_password}"
  store_type: PKCS12
  require_client_auth: false
"""


def logback_xml(log_file: Path) -> str:
    # cassandra-all ships no logback.xml; without one logback prints DEBUG to the console.
    return f"""\
<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{log_file}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{log_file}.%i</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>50MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"""


def query_answers(settings: Settings, timeout: float = 5.0, *, peers: int = 0) -> bool:
    """True when the node(s) of `settings` serve a CQL read of system.local and know `peers` other nodes."""
    from cassandra.cluster import Cluster  # only probes need the driver

    cluster = Cluster(**cluster_options(settings, timeout), control_connection_timeout=timeout)
    try:
        session = cluster.connect()
        if session.execute("SELECT release_version FROM system.local").one() is None:
            return False
        return len(list(session.execute("SELECT peer FROM system.peers_v2"))) >= peers
    except Exception:  # noqa: BLE001 - any failure means "not answering yet"
        return False
    finally:
        cluster.shutdown()
