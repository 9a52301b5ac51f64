"""Kafka and Cassandra in throwaway containers, used by the fixtures when a Docker engine answers."""
from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from thumbs_devtools.kafka import MAX_MESSAGE_BYTES
from thumbs_devtools.versions import load as load_versions

STARTUP_TIMEOUT = 180


def docker_answers(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers a ping (what testcontainers needs), within `timeout` seconds."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not _unix_socket_answers(host.removeprefix("unix://"), timeout):
        return False  # asked through the SDK instead, a refused socket is left open behind the error
    try:
        import docker

        client = docker.from_env(timeout=int(timeout))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no socket, no permission, no engine: all mean "no Docker"
        return False


def _unix_socket_answers(path: str, timeout: float) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def kafka_container() -> Iterator[str]:
    """apache/kafka in KRaft mode; yields the bootstrap address.

    testcontainers' KafkaContainer drives Confluent's image scripts, which apache/kafka lacks, so this
    configures the official image through its KAFKA_* variables. The advertised address must be the one
    the host dials, so the host port is chosen up front and bound fixed.
    """
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    port = _free_port()
    container = (
        DockerContainer(f"apache/kafka:{load_versions().kafka}")
        .with_bind_ports(9092, port)
        .with_envs(**kafka_env(f"PLAINTEXT://127.0.0.1:{port}"))
        .waiting_for(LogMessageWaitStrategy("Kafka Server started").with_startup_timeout(STARTUP_TIMEOUT))
    )
    with container:
        yield f"127.0.0.1:{port}"


def kafka_env(advertised: str) -> dict[str, str]:
    """The same broker settings `thumbs servers` writes, as the apache/kafka image reads them."""
    size = str(MAX_MESSAGE_BYTES)
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": advertised,
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_NUM_PARTITIONS": "6",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_MESSAGE_MAX_BYTES": size,
        "KAFKA_REPLICA_FETCH_MAX_BYTES": size,
    }


@contextmanager
def cassandra_container() -> Iterator[tuple[tuple[str, ...], int]]:
    """cassandra:5.0; yields (contact hosts, port)."""
    from testcontainers.community.cassandra import CassandraContainer

    with CassandraContainer("cassandra:5.0") as container:
        host, port = container.get_contact_points()[0]
        yield (host,), int(port)
