"""`thumbs servers start --secure`: SASL_SSL Kafka and password-authenticated, TLS Cassandra, used by the service."""
from __future__ import annotations

import dataclasses
import io
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from cassandra import AuthenticationFailed
from cassandra.cluster import NoHostAvailable
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from PIL import Image

from services.common.cassandra import MIGRATIONS, connect, migrate
from services.common.kafka import client_config
from services.common.settings import PREFIX, Settings
from thumbs_devtools.commands import environment
from thumbs_devtools.lifecycle import all_servers, ensure_running, stop_servers
from thumbs_devtools.topology import choose

from .stack import ImageServer, Stack, poll_terminal, running_stack, wait_for

pytestmark = pytest.mark.integration

# Away from the default servers (127.0.0.1:9092/9042) and the 3-node set (19092-19097, 127.0.0.11-13).
SERVERS = {"KAFKA_BOOTSTRAP": "127.0.0.1:29092", "CASSANDRA_HOSTS": "127.0.0.21"}
REFUSED_WITHIN = 3.0  # seconds a producer with a wrong password waits for an acknowledgement that never comes


@pytest.fixture(scope="module")
def secure_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A secure Kafka and Cassandra of their own, started as `thumbs servers start --secure` starts them; the
    THUMBS_* variables `thumbs servers env` prints for them."""
    state = tmp_path_factory.mktemp("secure-servers")
    shared_cache = Settings().state_dir / "cache"
    shared_cache.mkdir(parents=True, exist_ok=True)
    (state / "cache").symlink_to(shared_cache)  # the jars the default servers resolved
    settings = Settings.from_env({PREFIX + "STATE_DIR": str(state), **{PREFIX + k: v for k, v in SERVERS.items()}})
    topology = choose(settings, None, None, secure=True)
    try:
        ensure_running(settings, print, topology)
        yield environment(settings, topology)
    finally:
        stop_servers(all_servers(settings, topology), print, grace=15)


@pytest.fixture(scope="module")
def secure(secure_env: dict[str, str]) -> Settings:
    return Settings.from_env(secure_env)


def test_env_logs_in_to_both_servers(secure: Settings) -> None:
    assert (secure.kafka_security_protocol, secure.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert secure.kafka_sasl_password and secure.cassandra_username and secure.cassandra_ssl_ca_location


def test_kafka_round_trip_over_sasl_ssl(secure: Settings) -> None:
    topic = f"secure-check-{uuid.uuid4().hex[:12]}"
    admin = AdminClient(client_config(secure))
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)
    try:
        producer = Producer({**client_config(secure), "acks": "all"})
        producer.produce(topic, key=b"k", value=b"over SASL_SSL")
        assert producer.flush(30) == 0
        consumer = Consumer({**client_config(secure), "group.id": f"secure-check-{uuid.uuid4()}",
                             "auto.offset.reset": "earliest"})
        try:
            consumer.subscribe([topic])
            message = _first_message(consumer, timeout=30)
            assert (message.key(), message.value()) == (b"k", b"over SASL_SSL")
        finally:
            consumer.close()
    finally:
        admin.delete_topics([topic])[topic].result(timeout=30)


def _first_message(consumer: Consumer, timeout: float) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            raise KafkaException(message.error())
        return message
    raise AssertionError(f"no record within {timeout:.0f} s")


def test_kafka_refuses_a_wrong_password(secure: Settings) -> None:
    errors: list[KafkaError] = []
    wrong = dataclasses.replace(secure, kafka_sasl_password="not-the-password")
    # librdkafka retries a refused login until message.timeout.ms; only error_cb hears why.
    producer = Producer({**client_config(wrong), "error_cb": errors.append, "log_level": 0})
    producer.produce(f"secure-refused-{uuid.uuid4().hex[:12]}", value=b"never stored")
    try:
        assert producer.flush(REFUSED_WITHIN) == 1, "a producer with a wrong password got an acknowledgement"
        assert any(error.code() == KafkaError._AUTHENTICATION for error in errors), [e.str() for e in errors]
    finally:
        producer.purge()
        producer.flush(0)


def test_cassandra_connects_and_migrates_with_the_password(secure: Settings) -> None:
    settings = dataclasses.replace(secure, keyspace=f"secure_{uuid.uuid4().hex[:12]}")
    session = connect(settings, timeout=20)
    try:
        assert migrate(settings, session) == [m.version for m in MIGRATIONS]
        tables = session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
                                 (settings.keyspace,))
        assert {"tasks", "thumbnails", "schema_migrations"} <= {row.table_name for row in tables}
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.keyspace}", timeout=60)
        session.cluster.shutdown()


def test_cassandra_refuses_a_wrong_password(secure: Settings) -> None:
    with pytest.raises(NoHostAvailable) as refused:
        connect(dataclasses.replace(secure, cassandra_password="not-the-password"), timeout=10)
    assert any(isinstance(error, AuthenticationFailed) for error in refused.value.errors.values()), refused.value


@pytest.fixture(scope="module")
def stack(secure_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    servers = Settings.from_env(secure_env)
    # Every variable `thumbs servers env` printed, except the state dir: the stack keeps its own.
    extra = {name.removeprefix(PREFIX): value for name, value in secure_env.items() if name != PREFIX + "STATE_DIR"}
    with running_stack(servers.kafka_bootstrap, (servers.cassandra_hosts, servers.cassandra_port),
                       tmp_path_factory.mktemp("secure-stack"), names=(*Stack.names, "stats"), **extra) as stack:
        yield stack


def test_a_task_completes_through_the_secure_servers(client: httpx.Client, images: ImageServer) -> None:
    source = io.BytesIO()
    Image.new("RGB", (400, 200), (200, 40, 40)).save(source, "PNG")
    url = images.add("/secure/red.png", source.getvalue(), "image/png")
    response = client.post("/thumbnail", json={"source_image_url": url})
    assert response.status_code == 202, response.text
    body = poll_terminal(client, response.json()["task_id"], timeout=60)
    assert body["status"] == "SUCCESS", body
    assert (body["width"], body["height"]) == (100, 50)


def test_statistics_count_through_the_secure_servers(client: httpx.Client, stack: Stack) -> None:
    """The stats stage (Faust, aiokafka) speaks SASL_SSL with SCRAM too: it counted the task above."""
    def counted() -> bool:
        answer = client.get("/stats")
        return answer.status_code == 200 and answer.json()["totals"]["succeeded"] >= 1

    wait_for(counted, 90, lambda: "no statistics:\n" + stack.log_tail("stats", 15))
