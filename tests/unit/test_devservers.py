"""The configuration `thumbs servers` writes, and its jar cache, without starting a JVM."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from services.common.settings import Settings
from thumbs_devtools import commands, maven, tls
from thumbs_devtools.cassandra import Cassandra, cassandra_yaml, ring_token, secure_jvm_flags
from thumbs_devtools.kafka import MAX_MESSAGE_BYTES, Kafka, cluster_id, server_properties
from thumbs_devtools.lifecycle import all_servers
from thumbs_devtools.topology import Topology, TopologyError, choose, save
from thumbs_devtools.versions import Versions, load, parse_env_file

VERSIONS = Versions(kafka="4.1.1", kafka_log4j="2.24.3", cassandra="5.0.9")
SINGLE = Topology(1, 1, "AAAAAAAAAAAAAAAAAAAAAA")
CLUSTER = Topology(3, 3, "AAAAAAAAAAAAAAAAAAAAAA")


def test_versions_file_pins_every_server() -> None:
    pinned = load()
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in (pinned.kafka, pinned.kafka_log4j, pinned.cassandra))
    assert parse_env_file("# c\nA=1\n\nB = 2\n") == {"A": "1", "B": "2"}


def test_kafka_properties_single_node_with_large_messages(tmp_path: Path) -> None:
    lines = dict(line.split("=", 1) for line in server_properties(9092, tmp_path).splitlines())
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert lines["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert lines["message.max.bytes"] == lines["replica.fetch.max.bytes"] == str(MAX_MESSAGE_BYTES)
    assert lines["offsets.topic.replication.factor"] == lines["offsets.topic.num.partitions"] == "1"
    assert lines["group.initial.rebalance.delay.ms"] == "0"
    assert lines["log.dirs"] == str(tmp_path)


def test_kafka_port_follows_bootstrap(tmp_path: Path) -> None:
    kafka = Kafka(Settings(kafka_bootstrap="127.0.0.1:19092,other:1", state_dir=tmp_path), VERSIONS, SINGLE)
    assert kafka.address() == "127.0.0.1:19092"
    assert kafka.layout.home == tmp_path / "servers" / "kafka-1"


def test_a_three_broker_cluster_is_three_voters_with_replicated_internal_topics(tmp_path: Path) -> None:
    lines = dict(line.split("=", 1) for line in server_properties(19092, tmp_path, 2, 3).splitlines())
    assert lines["node.id"] == "2"
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:19094,CONTROLLER://127.0.0.1:19095"
    assert lines["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    assert lines["offsets.topic.replication.factor"] == lines["default.replication.factor"] == "3"
    assert lines["min.insync.replicas"] == lines["transaction.state.log.min.isr"] == "2"


def test_a_ring_has_one_balanced_token_per_node_on_its_own_address(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    nodes = [s for s in all_servers(settings, CLUSTER) if isinstance(s, Cassandra)]
    assert [n.address() for n in nodes] == ["127.0.0.11:9042", "127.0.0.12:9042", "127.0.0.13:9042"]
    tokens = [ring_token(n, 3) for n in (1, 2, 3)]
    assert tokens[0] == -(2**63) and tokens[1] - tokens[0] == tokens[2] - tokens[1] == 2**64 // 3
    config = yaml.safe_load(cassandra_yaml(9042, tmp_path, host="127.0.0.12", seeds=["127.0.0.11", "127.0.0.12"],
                                           token=tokens[1], cluster_name="c"))
    assert config["listen_address"] == config["rpc_address"] == "127.0.0.12"
    assert config["seed_provider"][0]["parameters"][0]["seeds"] == "127.0.0.11:7000,127.0.0.12:7000"
    assert config["endpoint_snitch"] == "GossipingPropertyFileSnitch"


def test_env_points_clients_at_every_node_with_replicated_settings(tmp_path: Path) -> None:
    env = commands.environment(Settings(state_dir=tmp_path), CLUSTER)
    assert env["THUMBS_KAFKA_BOOTSTRAP"] == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert env["THUMBS_CASSANDRA_HOSTS"] == "127.0.0.11,127.0.0.12,127.0.0.13"
    assert env["THUMBS_CASSANDRA_REPLICATION"] == "NetworkTopologyStrategy:dc1=3"
    assert (env["THUMBS_TOPIC_REPLICATION_FACTOR"], env["THUMBS_TOPIC_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    assert Settings.from_env(env).cassandra_local_dc == "dc1"  # what `eval "$(thumbs servers env)"` yields


def test_the_shape_is_kept_and_changing_it_needs_a_wipe(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert (choose(settings, None, None).kafka_brokers, choose(settings, 3, 3).cassandra_nodes) == (1, 3)
    save(settings, choose(settings, 3, 3))
    assert choose(settings, None, None).kafka_brokers == 3  # a plain `start` restarts the same cluster
    with pytest.raises(TopologyError, match="--wipe"):
        choose(settings, 1, None)


def test_cluster_id_looks_like_kafkas() -> None:
    for _ in range(50):
        assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", cluster_id())


def test_cassandra_yaml_fits_large_thumbnails(tmp_path: Path) -> None:
    config = yaml.safe_load(cassandra_yaml(9042, tmp_path))
    assert config["native_transport_port"] == 9042
    assert int(config["commitlog_segment_size"].removesuffix("MiB")) >= 32
    assert config["auto_snapshot"] is False
    assert config["data_file_directories"] == [str(tmp_path / "data")]


def test_cassandra_command_has_jpms_flags_and_agent(tmp_path: Path) -> None:
    node = Cassandra(Settings(state_dir=tmp_path), VERSIONS, SINGLE)
    lib = tmp_path / "cache" / "cassandra-5.0.9"
    (lib / "lib").mkdir(parents=True)
    (lib / maven.STAMP).write_text("cassandra.version=5.0.9\n")
    argv = node.prepare(lambda _line: None)
    assert "--add-opens" in argv and "java.base/sun.nio.ch=ALL-UNNAMED" in argv
    assert f"-javaagent:{lib / 'lib' / 'jamm-0.4.0.jar'}" in argv
    assert any(arg.startswith("-Dcassandra.config=file:///") for arg in argv)
    assert argv[-1] == "org.apache.cassandra.service.CassandraDaemon"


def test_maven_cache_is_reused_only_when_complete(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / maven.STAMP).write_text("v=1\n")
    assert maven.cached_lib(tmp_path, tmp_path / "missing-pom.xml", {"v": "1"}) == tmp_path / "lib"


SECURE = Topology(1, 1, "AAAAAAAAAAAAAAAAAAAAAA", secure=True)


def test_security_is_kept_and_changing_it_needs_a_wipe(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    assert choose(settings, None, None).secure is False
    save(settings, choose(settings, None, None, True))
    assert choose(settings, None, None).secure is True  # a plain `start` keeps the servers secure
    with pytest.raises(TopologyError, match="--wipe"):
        choose(settings, None, None, False)


def test_material_is_made_once_with_private_stores_and_an_ip_certificate(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID

    folder = tmp_path / "tls"
    material = tls.ensure(folder, ["127.0.0.1", "127.0.0.21"])
    assert tls.ensure(folder, ["127.0.0.1"]) == material  # the second call reads what the first made
    assert material.store_password not in repr(material) and material.kafka_password not in repr(material)
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        tls.CA_PEM: 0o644, tls.KEYSTORE: 0o600, tls.TRUSTSTORE: 0o600, tls.SECRETS: 0o600}
    key, cert, chain = pkcs12.load_key_and_certificates(material.keystore.read_bytes(),
                                                        material.store_password.encode())
    ca = x509.load_pem_x509_certificate(material.ca_pem.read_bytes())
    assert key is not None and cert is not None and chain == [ca]
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "127.0.0.21"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}


def test_secure_brokers_speak_sasl_ssl_with_a_plain_loopback_controller(tmp_path: Path) -> None:
    material = tls.Material(tmp_path, "store-pw", "scram-pw")
    lines = dict(line.split("=", 1) for line in server_properties(29092, tmp_path, material=material).splitlines())
    assert lines["listeners"] == "SASL_SSL://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert lines["advertised.listeners"] == "SASL_SSL://127.0.0.1:29092"
    assert lines["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
    assert lines["inter.broker.listener.name"] == "SASL_SSL"
    assert lines["sasl.enabled.mechanisms"] == lines["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert 'username="admin" password="scram-pw";' in lines["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert lines["ssl.keystore.location"] == str(tmp_path / tls.KEYSTORE)
    assert lines["ssl.truststore.location"] == str(tmp_path / tls.TRUSTSTORE)
    assert lines["ssl.keystore.password"] == lines["ssl.truststore.password"] == lines["ssl.key.password"] == "store-pw"
    assert lines["super.users"] == "User:admin;User:ANONYMOUS"
    assert lines["message.max.bytes"] == str(MAX_MESSAGE_BYTES)  # the rest of the broker is unchanged
    assert "sasl.enabled.mechanisms" not in server_properties(29092, tmp_path)


def test_secure_cassandra_asks_for_a_password_and_tls(tmp_path: Path) -> None:
    config = yaml.safe_load(cassandra_yaml(9042, tmp_path, material=tls.Material(tmp_path, "0123", "x")))
    assert (config["authenticator"], config["authorizer"], config["role_manager"]) == (
        "PasswordAuthenticator", "CassandraAuthorizer", "CassandraRoleManager")
    encryption = config["client_encryption_options"]
    assert encryption["enabled"] is True and encryption["optional"] is False
    assert encryption["keystore"] == str(tmp_path / tls.KEYSTORE)
    assert encryption["keystore_password"] == "0123"  # quoted, so a digits-only password stays a string
    assert "authenticator" not in yaml.safe_load(cassandra_yaml(9042, tmp_path))


def test_secure_cassandra_creates_its_superuser_at_once(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, cassandra_hosts=("127.0.0.21",))
    lib = tmp_path / "cache" / "cassandra-5.0.9"
    (lib / "lib").mkdir(parents=True)
    (lib / maven.STAMP).write_text("cassandra.version=5.0.9\n")
    argv = Cassandra(settings, VERSIONS, SECURE).prepare(lambda _line: None)
    assert "-Dcassandra.superuser_setup_delay_ms=100" in argv
    assert "-Dcassandra.system_auth.default_rf=3" in secure_jvm_flags(3)  # logins survive a dead node of a ring
    assert (tmp_path / "servers" / "cassandra-1" / "conf" / "cassandra.yaml").stat().st_mode & 0o777 == 0o600
    assert not any("superuser" in arg for arg in Cassandra(settings, VERSIONS, SINGLE).prepare(lambda _line: None))


def test_env_of_secure_servers_logs_in_with_their_passwords(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:29092", cassandra_hosts=("127.0.0.21",))
    env = commands.environment(settings, SECURE)
    material = tls.load(tls.directory(tmp_path))
    loaded = Settings.from_env(env)  # what `eval "$(thumbs servers env)"` yields
    assert (loaded.kafka_security_protocol, loaded.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (loaded.kafka_sasl_username, loaded.kafka_sasl_password) == ("admin", material.kafka_password)
    assert loaded.kafka_ssl_ca_location == loaded.cassandra_ssl_ca_location == str(material.ca_pem)
    assert (loaded.cassandra_username, loaded.cassandra_password) == ("cassandra", "cassandra")
    assert loaded.kafka_bootstrap == "127.0.0.1:29092" and loaded.cassandra_hosts == ("127.0.0.21",)
    plain = commands.environment(settings, SINGLE)
    assert not any("SASL" in name or "PASSWORD" in name or "SSL" in name for name in plain)
