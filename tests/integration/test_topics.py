"""`thumbs topics` against the real broker: creates what is missing, reports differences, applies only when asked."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from services.cli import main
from services.common.kafka import MAX_MESSAGE_BYTES, client_config
from services.common.model import FETCHED, PIPELINE_TOPICS, REQUESTED
from services.common.settings import Settings
from services.common.topic_plan import SHRINK_REASON, ConfigChange, PartitionGrowth, Unappliable
from services.common.topics import ensure_topics

from .stack import drop_environment, isolated_env, settings_of, wait_for

pytestmark = pytest.mark.integration

HAND_SET_RETENTION = "3600000"
TopicsCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def env(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path: Path) -> Iterator[dict[str, str]]:
    """An isolated topic prefix with 3 partitions per topic; the single local broker allows replication factor 1 only."""
    variables = isolated_env(kafka_bootstrap, cassandra_contact, tmp_path,
                             TOPIC_REPLICATION_FACTOR="1", TOPIC_MIN_INSYNC_REPLICAS="1")
    try:
        yield variables
    finally:
        drop_environment(settings_of(variables))


@pytest.fixture
def thumbs_topics(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> TopicsCli:
    """Runs `thumbs topics FLAGS` in-process with the environment's variables: (exit status, stdout, stderr)."""

    def run(*flags: str, **overrides: str) -> tuple[int, str, str]:
        for name, value in {**env, **{f"THUMBS_{k}": v for k, v in overrides.items()}}.items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        status = main(["topics", *flags])
        out, err = capsys.readouterr()
        return status, out, err

    return run


def names(settings: Settings) -> list[str]:
    return [settings.topic(t) for t in PIPELINE_TOPICS]


def partitions(settings: Settings) -> dict[str, tuple[int, int]]:
    """(partitions, replicas of partition 0) of the environment's topics, as the broker lists them."""
    topics = AdminClient(client_config(settings)).list_topics(timeout=10).topics
    mine = {n: t for n, t in topics.items() if n.startswith(settings.topic_prefix)}
    return {n: (len(t.partitions), len(t.partitions[0].replicas)) for n, t in mine.items()}


def config(settings: Settings, topic: str, key: str) -> str:
    admin = AdminClient(client_config(settings))  # kept referenced: a collected client fails its futures
    (future,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    return future.result(10)[key].value


def set_by_hand(settings: Settings, topic: str, key: str, value: str) -> None:
    entry = ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient(client_config(settings))
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(10)
    wait_for(lambda: config(settings, topic, key) == value, 10, lambda: f"{topic} {key} still not {value}")


def test_missing_topics_are_created_with_the_wanted_configs(env: dict[str, str], thumbs_topics: TopicsCli) -> None:
    settings = settings_of(env)
    status, out, _ = thumbs_topics("--dry-run")
    assert status == 1 and out.count("missing, would be created") == len(PIPELINE_TOPICS), out
    assert partitions(settings) == {}  # a dry run creates nothing

    report = ensure_topics(settings)
    assert report.in_sync and all(t.created for t in report.topics)
    assert partitions(settings) == {name: (3, 1) for name in names(settings)}
    for name in names(settings):
        retention = settings.fetched_retention_ms if name == settings.topic(FETCHED) else settings.topic_retention_ms
        assert config(settings, name, "retention.ms") == str(retention)
        assert config(settings, name, "max.message.bytes") == str(MAX_MESSAGE_BYTES)
        assert config(settings, name, "min.insync.replicas") == "1"

    status, out, _ = thumbs_topics()
    assert status == 0 and out.count(": up to date") == len(PIPELINE_TOPICS), out


def test_a_hand_changed_config_is_reported_and_changed_only_with_apply(env: dict[str, str], thumbs_topics: TopicsCli) -> None:
    settings = settings_of(env)
    ensure_topics(settings)
    topic, wanted = settings.topic(REQUESTED), str(settings.topic_retention_ms)
    set_by_hand(settings, topic, "retention.ms", HAND_SET_RETENTION)

    report = ensure_topics(settings)
    assert not report.in_sync
    assert {t.name: t.differs for t in report.topics if t.differs} == {
        topic: (ConfigChange(topic, "retention.ms", HAND_SET_RETENTION, wanted),)}
    assert config(settings, topic, "retention.ms") == HAND_SET_RETENTION  # a plain run reports, never changes

    status, out, err = thumbs_topics("--dry-run")
    assert status == 1 and f"{topic}: differs: retention.ms {HAND_SET_RETENTION} → {wanted}\n" in out, out
    assert "--apply" in err
    assert config(settings, topic, "retention.ms") == HAND_SET_RETENTION

    status, out, _ = thumbs_topics("--apply")
    assert status == 0 and f"{topic}: changed: retention.ms {HAND_SET_RETENTION} → {wanted}\n" in out, out
    assert config(settings, topic, "retention.ms") == wanted
    status, out, _ = thumbs_topics()
    assert status == 0 and out.count(": up to date") == len(PIPELINE_TOPICS), out


def test_partitions_grow_with_apply_and_never_shrink(env: dict[str, str], thumbs_topics: TopicsCli) -> None:
    settings = settings_of(env)
    ensure_topics(settings)
    more = settings_of({**env, "THUMBS_TOPIC_PARTITIONS": "5"})

    report = ensure_topics(more)
    assert [t.differs for t in report.topics] == [(PartitionGrowth(n, 3, 5),) for n in names(settings)]
    assert partitions(settings) == {name: (3, 1) for name in names(settings)}

    grown = ensure_topics(more, apply=True)
    assert grown.in_sync and [t.changed for t in grown.topics] == [(PartitionGrowth(n, 3, 5),) for n in names(settings)]
    assert partitions(settings) == {name: (5, 1) for name in names(settings)}

    fewer = ensure_topics(settings_of({**env, "THUMBS_TOPIC_PARTITIONS": "2"}), apply=True)
    assert not fewer.in_sync and not fewer.applicable
    assert [t.unappliable for t in fewer.topics] == [
        (Unappliable(n, "partitions", 5, 2, SHRINK_REASON),) for n in names(settings)]
    status, out, _ = thumbs_topics("--apply", TOPIC_PARTITIONS="2")
    assert status == 1 and out.count("cannot apply: partitions 5 → 2 (partitions only ever grow") == len(PIPELINE_TOPICS)
    assert partitions(settings) == {name: (5, 1) for name in names(settings)}
