"""`thumbs replay` against the real processes: replays change nothing they shouldn't, and redo what they should."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from services.common.cassandra import connect
from services.common.kafka import client_config

from .stack import REPO, ImageServer, Stack, poll_terminal, running_stack, wait_for
from .test_pipeline import photo

pytestmark = pytest.mark.integration

TASKS, IMAGES = 500, 25
BAD_TTL = "3000000000"  # beyond Cassandra's int32 TTL: the driver refuses every write of the projector


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("replay")) as stack:
        yield stack


@pytest.fixture(scope="module")
def batch(client: httpx.Client, images: ImageServer) -> dict[str, str]:
    """TASKS tasks over IMAGES distinct pictures, all finished: task id -> terminal status."""
    urls = [images.add(f"/batch/{n}.jpg", photo(320, 240, seed=100 + n)) for n in range(IMAGES)]
    ids = [client.post("/thumbnail", json={"source_image_url": urls[n % IMAGES]}).json()["task_id"] for n in range(TASKS)]
    return {task_id: poll_terminal(client, task_id, timeout=120)["status"] for task_id in ids}


def replay(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs `thumbs replay ...` as an operator would, in the stack's environment."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "replay", *args], env={**os.environ, **stack.env},
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )


def published(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r"published (\d+), skipped", result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def metric(stack: Stack, stage: str, name: str) -> float:
    """The metric, or -1 while the stage's /metrics is not up (a restarted process starts from 0)."""
    try:
        return stack.metric(stage, name)
    except httpx.HTTPError:
        return -1.0


def wait_metric(stack: Stack, stage: str, name: str, at_least: float, timeout: float = 90.0) -> None:
    wait_for(lambda: metric(stack, stage, name) >= at_least, timeout,
             lambda: f"{stage} {name}={metric(stack, stage, name)} < {at_least}\n{stack.log_tail(stage)}", interval=0.5)


def rank(body: dict) -> int:
    """Status rank as the API shows it: in-flight tasks answer PENDING with the projected stage."""
    if body["status"] in ("SUCCESS", "FAILURE"):
        return 3
    return 2 if body.get("stage") == "FETCHED" else 1


class Watcher(threading.Thread):
    """Polls a few tasks over and over, keeping every status rank it sees."""

    def __init__(self, api: str, task_ids: list[str]) -> None:
        super().__init__(daemon=True)
        self.api, self.task_ids = api, task_ids
        self.seen: dict[str, list[int]] = {t: [] for t in task_ids}
        self.halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=10) as http:
            while not self.halt.is_set():
                for task_id in self.task_ids:
                    self.seen[task_id].append(rank(http.get("/thumbnail", params={"task_id": task_id}).json()))

    def backwards(self) -> dict[str, list[int]]:
        return {t: ranks for t, ranks in self.seen.items() if ranks != sorted(ranks)}


def test_replaying_requests_changes_nothing(stack: Stack, client: httpx.Client, batch: dict[str, str]) -> None:
    assert set(batch.values()) == {"SUCCESS"}
    fetcher_in = metric(stack, "fetcher", "thumbs_events_in_total")
    projector_in = metric(stack, "projector", "thumbs_events_in_total")
    resizes = metric(stack, "resizer", "thumbs_resizes_total")
    watcher = Watcher(stack.api, list(batch)[:20])
    watcher.start()
    started = time.monotonic()
    try:
        result = replay(stack, "republish", "--topic", "thumbnail.requested", "--task-id", *batch)
        assert published(result) == TASKS
        # Drained: the fetcher took every replayed request, and the projector saw the replayed
        # request, the new fetched event and the new completed event of every task.
        wait_metric(stack, "fetcher", "thumbs_events_in_total", fetcher_in + TASKS)
        wait_metric(stack, "projector", "thumbs_events_in_total", projector_in + 2 * TASKS)  # requested, completed (known content is answered by the fetcher)
        drained = time.monotonic() - started
    finally:
        watcher.halt.set()
        watcher.join(10)
    print(f"republished {TASKS} requests and drained in {drained:.1f} s")
    assert metric(stack, "resizer", "thumbs_resizes_total") == resizes
    assert {t: client.get("/thumbnail", params={"task_id": t}).json()["status"] for t in batch} == batch
    assert watcher.backwards() == {} and all(watcher.seen.values())
    assert f"selected {TASKS} of" in result.stdout


def test_renderer_bump_re_renders_each_image_once(stack: Stack, client: httpx.Client, batch: dict[str, str]) -> None:
    stack.stop("resizer")
    stack.env["THUMBS_RENDERER_VERSION"] = "2"
    stack.start("resizer")
    projector_in = metric(stack, "projector", "thumbs_events_in_total")
    count = published(replay(stack, "republish", "--topic", "thumbnail.fetched", "--task-id", *batch))
    # Only first sightings of an image were fetched events; later tasks were answered by the fetcher.
    assert count >= IMAGES
    wait_metric(stack, "resizer", "thumbs_events_in_total", count)  # the new process counts from 0
    wait_metric(stack, "projector", "thumbs_events_in_total", projector_in + count)  # the completions: it reads no fetched
    assert metric(stack, "resizer", "thumbs_resizes_total") == IMAGES
    assert metric(stack, "resizer", "thumbs_dedupe_hits_total") == count - IMAGES
    session = connect(stack.settings)
    try:
        rows = session.execute(f"SELECT task_id, status, rendition_key FROM {stack.settings.keyspace}.tasks")
        keys = {str(r.task_id): (r.status, r.rendition_key) for r in rows if str(r.task_id) in batch}
        thumbnails = list(session.execute(f"SELECT source_sha256, rendition_key FROM {stack.settings.keyspace}.thumbnails"))
    finally:
        session.cluster.shutdown()
    assert len(keys) == TASKS
    assert {status for status, _ in keys.values()} == {"SUCCESS"}
    # every distinct image now has exactly one version-2 rendition, and the replayed tasks point at it
    assert len({t.source_sha256 for t in thumbnails if t.rendition_key.endswith(".r2")}) == IMAGES
    assert sum(key.endswith(".r2") for _, key in keys.values()) >= IMAGES
    sample = next(iter(batch))
    assert poll_terminal(client, sample)["status"] == "SUCCESS"


def test_dead_letters_complete_after_the_fix_and_a_redrive(stack: Stack, client: httpx.Client, images: ImageServer) -> None:
    since = datetime.now(UTC).isoformat()
    stack.stop("projector")
    stack.env["THUMBS_TASK_TTL_SECONDS"] = BAD_TTL  # a typo in the projector's deployment
    stack.start("projector")
    urls = [images.add(f"/redrive/{n}.jpg", photo(200, 150, seed=500 + n)) for n in range(3)]
    ids = [client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"] for url in urls]
    # hashed and completed of each task: dead-lettered by the projector (the API wrote the requested row itself)
    wait_metric(stack, "projector", "thumbs_dead_letters_total", 2 * len(ids), timeout=60)
    time.sleep(2.5)  # let the projector commit past them (every 1 s): the fixed projector must not see them
    stack.stop("projector")
    del stack.env["THUMBS_TASK_TTL_SECONDS"]
    stack.start("projector")
    wait_metric(stack, "projector", "thumbs_events_in_total", 0)
    time.sleep(3)
    assert metric(stack, "projector", "thumbs_events_in_total") == 0
    assert {client.get("/thumbnail", params={"task_id": t}).json()["status"] for t in ids} == {"PENDING"}
    resizes = metric(stack, "resizer", "thumbs_resizes_total")

    result = replay(stack, "redrive", "--stage", "projector", "--reason", "invalid type", "--since", since)
    assert published(result) == 2 * len(ids)
    assert [poll_terminal(client, t)["status"] for t in ids] == ["SUCCESS"] * len(ids)
    wait_metric(stack, "projector", "thumbs_events_in_total", 2 * len(ids))
    assert metric(stack, "resizer", "thumbs_resizes_total") == resizes  # redriving the projector's letters renders nothing


def test_rewind_refuses_a_live_group_then_moves_a_stopped_one(stack: Stack, client: httpx.Client, batch: dict[str, str]) -> None:
    settings = stack.settings
    group, topic = settings.group("projector"), settings.topic("thumbnail.completed")
    refused = replay(stack, "rewind", "--stage", "projector", "--topic", "thumbnail.completed", "--to-earliest")
    assert refused.returncode == 1 and "live member" in refused.stderr, refused.stderr

    stack.stop("projector")
    admin = AdminClient(client_config(settings))
    wait_for(lambda: not admin.describe_consumer_groups([group])[group].result(10).members, 60, lambda: f"{group} kept members")
    reader = Consumer({**client_config(settings), "group.id": f"{group}-check", "enable.auto.commit": False})
    try:
        partitions = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
        highs = {p: reader.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
        reader.assign([TopicPartition(topic, 0, highs[0] // 2)])  # a record from the middle of the topic
        message = reader.poll(10)
        assert message is not None and not message.error()
        at_ms = message.timestamp()[1]
        asked = [TopicPartition(topic, p, at_ms) for p in partitions]
        expected = {tp.partition: tp.offset if tp.offset >= 0 else highs[tp.partition]
                    for tp in reader.offsets_for_times(asked, timeout=10)}
    finally:
        reader.close()
    moment = datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    moved = replay(stack, "rewind", "--stage", "projector", "--topic", "thumbnail.completed", "--to-time", moment)
    assert moved.returncode == 0, moved.stderr
    listed = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    committed = {tp.partition: tp.offset for tp in listed.topic_partitions if tp.topic == topic}
    assert committed == expected and expected[0] <= highs[0] // 2 < highs[0]
    stack.start("projector")
    again = sum(highs[p] - expected[p] for p in highs)
    wait_metric(stack, "projector", "thumbs_events_in_total", again)
    sample = list(batch)[:10]
    assert {client.get("/thumbnail", params={"task_id": t}).json()["status"] for t in sample} == {"SUCCESS"}
