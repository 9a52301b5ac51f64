"""The shape of the local servers (brokers, nodes), fixed when they are first set up and kept beside them."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.settings import Settings

from .kafka import cluster_id

CASSANDRA_DC = "dc1"


class TopologyError(RuntimeError):
    """The requested shape differs from the one the servers' data was set up with."""


@dataclass(frozen=True)
class Topology:
    kafka_brokers: int = 1
    cassandra_nodes: int = 1
    kafka_cluster_id: str = ""  # every broker's storage is formatted with it
    secure: bool = False  # SASL_SSL/SCRAM brokers and password-authenticated Cassandra (see tls.py)

    @property
    def clustered(self) -> bool:
        return self.kafka_brokers > 1 or self.cassandra_nodes > 1


def topology_file(settings: Settings) -> Path:
    return settings.state_dir / "servers" / "topology.json"


def current(settings: Settings) -> Topology:
    """What was set up last, or the single-node default."""
    try:
        return Topology(**json.loads(topology_file(settings).read_text()))
    except FileNotFoundError:
        return Topology(kafka_cluster_id=cluster_id())


def choose(settings: Settings, kafka_brokers: int | None, cassandra_nodes: int | None,
           secure: bool | None = None) -> Topology:
    """The shape to start: the one already set up, unless the caller asks for another one on fresh storage."""
    existing = current(settings)
    wanted = Topology(kafka_brokers or existing.kafka_brokers, cassandra_nodes or existing.cassandra_nodes,
                      existing.kafka_cluster_id, existing.secure if secure is None else secure)
    if wanted.kafka_brokers < 1 or wanted.cassandra_nodes < 1:
        raise TopologyError("--kafka-brokers and --cassandra-nodes must be at least 1")
    if (wanted.kafka_brokers, wanted.cassandra_nodes) != (existing.kafka_brokers, existing.cassandra_nodes) \
            and topology_file(settings).exists():
        raise TopologyError(
            f"the local servers were set up as {existing.kafka_brokers} broker(s) and {existing.cassandra_nodes} "
            f"node(s); `thumbs servers stop --wipe` deletes their data so they can start as another shape"
        )
    if wanted.secure != existing.secure and topology_file(settings).exists():
        # Credentials live in the data (SCRAM users in Kafka's metadata log, roles in system_auth).
        raise TopologyError(
            f"the local servers were set up {'with' if existing.secure else 'without'} --secure; "
            f"`thumbs servers stop --wipe` deletes their data so they can start the other way"
        )
    return wanted


def save(settings: Settings, topology: Topology) -> None:
    path = topology_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(topology)) + "\n")
