"""`thumbs lag`, `thumbs dlq` and the replay modes' --dry-run/--limit against the real broker, on known records."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from services.cli import main
from services.common.events import encode, encode_dead_letter
from services.common.kafka import client_config
from services.common.model import DLQ, FETCHED, REQUESTED, Event, Requested
from services.common.settings import Settings
from services.common.topics import ensure_topics

from .stack import drop_environment, isolated_env, settings_of

pytestmark = pytest.mark.integration

TASK = "7f9c2b1e-4a5d-4c3b-9e8f-0a1b2c3d4e5f"
Thumbs = Callable[..., tuple[int, str, str]]


@pytest.fixture
def settings(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """An isolated topic prefix with its pipeline topics (3 partitions each), set in the environment; dropped after."""
    env = isolated_env(kafka_bootstrap, cassandra_contact, tmp_path, TOPIC_REPLICATION_FACTOR="1", TOPIC_MIN_INSYNC_REPLICAS="1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ensure_topics(settings_of(env))
    try:
        yield settings_of(env)
    finally:
        drop_environment(settings_of(env))


@pytest.fixture
def thumbs(settings: Settings, capsys: pytest.CaptureFixture[str]) -> Thumbs:
    """Runs `thumbs ARGS` in-process in the environment: (exit status, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(args))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def produce(settings: Settings, topic: str, values: list[tuple[int, bytes | None, bytes]]) -> None:
    """(partition, key, value) records onto a topic of the environment, acknowledged."""
    producer = Producer(client_config(settings))
    for partition, key, value in values:
        producer.produce(settings.topic(topic), value, key, partition=partition)
    assert producer.flush(30) == 0


def log_ends(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's high watermark: what has been written to it so far."""
    name = settings.topic(topic)
    reader = Consumer({**client_config(settings), "group.id": f"{settings.topic_prefix}check"})  # assigns nothing: no group forms
    try:
        partitions = sorted(reader.list_topics(name, timeout=10).topics[name].partitions)
        return {p: reader.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in partitions}
    finally:
        reader.close()


def request(task_id: str = TASK) -> bytes:
    return encode(Event(task_id, Requested("http://img.example/a.jpg"), "api")).value


def test_lag_counts_from_the_commit_or_from_the_earliest_offset(settings: Settings, thumbs: Thumbs) -> None:
    produce(settings, REQUESTED, [(0, b"k", request())] * 5 + [(1, b"k", request())] * 3)
    produce(settings, FETCHED, [(2, b"k", b"image")] * 2)
    group, topic = settings.group("fetcher"), settings.topic(REQUESTED)
    admin = AdminClient(client_config(settings))
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])])[group].result(10)

    status, out, err = thumbs("lag", "--json", "--stage", "fetcher", "--stage", "resizer")
    assert status == 0, err
    fetcher, resizer = json.loads(out)["groups"]
    rows = {(p["topic"], p["partition"]): (p["committed"], p["log_end"], p["lag"]) for p in fetcher["partitions"]}
    retry = settings.topic("thumbnail.requested.retry")
    assert rows == {
        (topic, 0): (3, 5, 2), (topic, 1): (None, 3, 3), (topic, 2): (None, 0, 0),
        (retry, 0): (None, 0, 0), (retry, 1): (None, 0, 0), (retry, 2): (None, 0, 0),
    }
    assert (fetcher["group"], fetcher["total_lag"], fetcher["members"]) == (group, 5, 0)
    assert (resizer["group"], resizer["total_lag"]) == (settings.group("resizer"), 2)

    status, out, _ = thumbs("lag")
    lines = out.splitlines()
    assert status == 0 and lines[0].split() == ["GROUP", "TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG"]
    # The projector and the stats stage read requested too; the notifier reads none of these topics.
    assert [line.split()[-1] for line in lines if " total (" in line] == ["5", "2", "8", "0", "8"]


def test_lag_names_missing_topics(thumbs: Thumbs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THUMBS_TOPIC_PREFIX", "no-such-prefix.")
    status, _, err = thumbs("lag", "--stage", "resizer")
    assert status == 1 and "no topic no-such-prefix.thumbnail.fetched" in err


def test_dlq_lists_and_shows_dead_letters(settings: Settings, thumbs: Thumbs) -> None:
    source = settings.topic(REQUESTED)
    value = request()
    produce(settings, DLQ, [
        (1, TASK.encode(), encode_dead_letter(reason="unexpected TypeError: bad ttl", stage="projector", topic=source,
                                              partition=2, offset=40, key=TASK.encode(), value=value, headers=[("origin", b"api")])),
        (1, None, encode_dead_letter(reason="not JSON: Expecting value", stage="fetcher", topic=source,
                                     partition=0, offset=9, key=None, value=b"\x00garbage", headers=[])),
    ])

    status, out, err = thumbs("dlq", "list")
    assert status == 0, err
    first, second = out.splitlines()
    assert first.startswith("1:0 ") and f"projector {source}[2]@40  task {TASK}  unexpected TypeError: bad ttl" in first
    assert second.startswith("1:1 ") and f"fetcher   {source}[0]@9  task -  not JSON: Expecting value" in second
    assert "2 of 2 matching dead letters shown" in err

    status, out, _ = thumbs("dlq", "list", "--json", "--reason", "json")
    assert status == 0 and [(e["partition"], e["offset"], e["stage"]) for e in json.loads(out)] == [(1, 1, "fetcher")]
    status, out, _ = thumbs("dlq", "list", "--limit", "1")
    assert status == 0 and out.startswith("1:1 ") and len(out.splitlines()) == 1  # the most recent

    status, out, err = thumbs("dlq", "show", "1:0")
    assert status == 0, err
    assert "reason:  unexpected TypeError: bad ttl" in out and f"origin:  {source}[2]@40" in out and "  origin: api" in out
    assert f"thumbnail.requested v1 event of task {TASK}" in out
    status, out, _ = thumbs("dlq", "show", "1:1", "--json")
    shown = json.loads(out)
    assert status == 0 and shown["original_value"]["event"] is None and shown["original_value"]["size"] == 8
    assert shown["original_value"]["preview"] == ".garbage"

    status, _, err = thumbs("dlq", "show", "0")
    assert status == 1 and "has 3 partitions: give PARTITION:OFFSET" in err
    status, _, err = thumbs("dlq", "show", "1:5")
    assert status == 1 and "holds offsets 0 to 1, not offset 5" in err


def test_dry_runs_send_nothing_and_a_limit_sends_that_many(settings: Settings, thumbs: Thumbs) -> None:
    produce(settings, REQUESTED, [(p, b"k", request(f"{TASK[:-1]}{p}")) for p in (0, 1, 2)])
    produce(settings, DLQ, [(0, None, encode_dead_letter(reason="unexpected", stage="projector", topic=settings.topic(REQUESTED),
                                                          partition=0, offset=0, key=b"k", value=request(), headers=[]))])
    before = log_ends(settings, REQUESTED)

    status, out, err = thumbs("replay", "republish", "--topic", "thumbnail.requested", "--dry-run", "--limit", "1")
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(f"would send to {settings.topic(REQUESTED)}: task {TASK[:-1]}")
    assert lines[1].startswith("republish: selected 1 of") and "published 0" in lines[1]
    assert lines[2] == "dry run: nothing published"
    status, out, _ = thumbs("replay", "redrive", "--dry-run")
    assert status == 0 and out.count("would send to") == 1 and "dry run: nothing published" in out
    assert log_ends(settings, REQUESTED) == before

    status, out, err = thumbs("replay", "republish", "--topic", "thumbnail.requested", "--limit", "2")
    assert status == 0 and "selected 2 of" in out and "published 2," in out, err
    assert sum(log_ends(settings, REQUESTED).values()) == sum(before.values()) + 2
