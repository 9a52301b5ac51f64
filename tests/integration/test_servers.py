"""The servers the fixtures hand out are real: a topic round-trips a large record, a table round-trips a row."""
from __future__ import annotations

import os
import uuid

import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

pytestmark = pytest.mark.integration

# Larger than Kafka's 1 MiB default: proves the broker takes the inline images our events carry.
LARGE = 3 * 1024 * 1024


def test_kafka_topic_round_trips_a_large_record(kafka_bootstrap: str) -> None:
    topic = f"servers-check-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    try:
        value = os.urandom(LARGE)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 2 * LARGE, "acks": "all"})
        producer.produce(topic, key=b"k", value=value)
        assert producer.flush(30) == 0
        assert _consume_one(kafka_bootstrap, topic) == (b"k", value)
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)


def _consume_one(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"servers-check-{uuid.uuid4()}",
        "auto.offset.reset": "earliest", "fetch.max.bytes": 2 * LARGE, "max.partition.fetch.bytes": 2 * LARGE,
    })
    try:
        consumer.subscribe([topic])
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            return message.key(), message.value()
        raise AssertionError(f"no record arrived on {topic} within 60 s")
    finally:
        consumer.close()


def test_cassandra_table_round_trips_a_row(cassandra_contact: tuple[tuple[str, ...], int]) -> None:
    hosts, port = cassandra_contact
    keyspace = f"servers_check_{uuid.uuid4().hex[:12]}"
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=30)
    cluster = Cluster(list(hosts), port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}, protocol_version=5)
    session = cluster.connect()
    try:
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        session.execute(f"CREATE TABLE {keyspace}.items (id uuid PRIMARY KEY, body blob)")
        row_id, body = uuid.uuid4(), os.urandom(1024 * 1024)
        session.execute(f"INSERT INTO {keyspace}.items (id, body) VALUES (%s, %s)", (row_id, body))
        row = session.execute(f"SELECT body FROM {keyspace}.items WHERE id = %s", (row_id,)).one()
        assert row is not None and row.body == body
        assert session.execute("SELECT release_version FROM system.local").one().release_version.startswith("5.")
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
        cluster.shutdown()
