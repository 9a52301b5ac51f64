"""The configuration `thumbs servers` writes, and its jar cache, without starting a JVM."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from services.common.settings import Settings
from services.devservers import maven
from services.devservers.cassandra import Cassandra, cassandra_yaml
from services.devservers.kafka import MAX_MESSAGE_BYTES, Kafka, cluster_id, server_properties
from services.devservers.versions import Versions, load, parse_env_file

VERSIONS = Versions(kafka="4.1.1", kafka_log4j="2.24.3", cassandra="5.0.9")


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
    kafka = Kafka(Settings(kafka_bootstrap="127.0.0.1:19092,other:1", state_dir=tmp_path), VERSIONS)
    assert kafka.address() == "127.0.0.1:19092"
    assert kafka.layout.home == tmp_path / "servers" / "kafka"


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
    node = Cassandra(Settings(state_dir=tmp_path), VERSIONS)
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
