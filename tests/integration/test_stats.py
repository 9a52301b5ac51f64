"""Live statistics (the Faust stats stage and GET /stats) against the real pipeline.

One environment for the module: its topics start empty, so every count the stage reports is one of these
tests' tasks, and each test states the exact change it expects.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.common.kafka import KafkaPublisher
from services.common.model import Event, Requested

from .stack import ImageServer, Stack, poll_terminal, running_stack, wait_for
from .test_pipeline import photo

pytestmark = pytest.mark.integration

WAIT_S = 90  # a restarted stats stage waits out the killed member's 10 s session, then reads its changelog


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    names = ("api", "fetcher", "resizer", "projector", "stats")
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("stats"), names=names) as stack:
        wait_for(lambda: _answers(stack), WAIT_S, lambda: "stats stage not answering:\n" + stack.log_tail("stats"))
        yield stack


@pytest.fixture(scope="module")
def good_sources(images: ImageServer) -> list[str]:
    return [images.add(f"/stats-{n}.jpg", photo(320, 240, seed=7000 + n)) for n in range(6)]


def _answers(stack: Stack) -> bool:
    return httpx.get(stack.api + "/stats", timeout=5).status_code == 200


def stats(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/stats")
    assert response.status_code == 200, response.text
    return response.json()


def changed_by(before: dict[str, Any], **deltas: Any) -> dict[str, Any]:
    """`before` with each count moved by its delta (failures_by_code: per code)."""
    after = {**before, "failures_by_code": dict(before["failures_by_code"])}
    for name, delta in deltas.items():
        if name == "failures_by_code":
            for code, n in delta.items():
                after["failures_by_code"][code] = after["failures_by_code"].get(code, 0) + n
        else:
            after[name] += delta
    return after


def wait_for_totals(client: httpx.Client, stack: Stack, expected: dict[str, Any]) -> None:
    wait_for(lambda: stats(client)["totals"] == expected, WAIT_S,
             lambda: f"totals {stats(client)['totals']} != {expected}\n{stack.log_tail('stats', 8)}", interval=0.5)


def submit(client: httpx.Client, url: str) -> str:
    response = client.post("/thumbnail", json={"source_image_url": url})
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def produce_requests(stack: Stack, urls: list[str]) -> list[str]:
    """Tasks produced straight into thumbnail.requested, as another system would."""
    events = [Event(task_id=str(uuid.uuid4()), payload=Requested(url), producer="test-system") for url in urls]
    publisher = KafkaPublisher(stack.settings)

    async def produce() -> None:
        for event in events:
            await publisher.publish_event(event)

    asyncio.run(produce())
    publisher.close()
    return [event.task_id for event in events]


def test_totals_move_by_exactly_the_tasks_submitted(client: httpx.Client, stack: Stack, images: ImageServer,
                                                    good_sources: list[str]) -> None:
    before = stats(client)["totals"]
    distinct = [submit(client, url) for url in good_sources[:4]]
    assert all(poll_terminal(client, task)["status"] == "SUCCESS" for task in distinct)
    duplicates = [submit(client, url) for url in good_sources[:2]]  # the same bytes again: rendered once
    failing = [submit(client, images.add("/stats-missing.jpg", b"gone", status=404)),
               submit(client, images.add("/stats-text.jpg", b"plain text, not an image", content_type="text/plain"))]
    direct = produce_requests(stack, good_sources[4:6])
    outcomes = {task: poll_terminal(client, task) for task in duplicates + failing}
    outcomes.update({task: poll_terminal(client, task, produced_to_kafka=True) for task in direct})
    assert [outcomes[task]["status"] for task in failing] == ["FAILURE", "FAILURE"]
    codes = [outcomes[task]["error"]["code"] for task in failing]

    expected = changed_by(before, requested=10, succeeded=8, failed=2, deduplicated=2,
                          failures_by_code={code: codes.count(code) for code in codes})
    wait_for_totals(client, stack, expected)

    document = stats(client)
    assert document["window_seconds"] == 10
    windows = document["windows"]
    starts = [window["start"] for window in windows]
    assert starts == sorted(starts)  # oldest first
    # The environment began empty: every count of the totals sits in one of the kept windows.
    for name in ("requested", "succeeded", "failed", "deduplicated"):
        assert sum(window[name] for window in windows) == document["totals"][name], name
    latencies = [window["latency_ms"] for window in windows if window["latency_ms"]]
    assert latencies and all(0 < lat["p50"] <= lat["p95"] <= lat["p99"] < 60_000 for lat in latencies)
    assert client.get("/stats", params={"minutes": "0"}).status_code == 400
    # The deployed stages' lag, read every 10 s: the notifier does not run here, so it is not listed.
    wait_for(lambda: set(stats(client)["consumer_lag"]) == {"fetcher", "resizer", "projector", "stats"}, 30,
             lambda: f"consumer_lag: {stats(client)['consumer_lag']}")
    assert all(isinstance(n, int) and n >= 0 for n in stats(client)["consumer_lag"].values())


def test_replays_count_apart_and_never_twice(client: httpx.Client, stack: Stack, good_sources: list[str]) -> None:
    start = stats(client)["totals"]
    tasks = [submit(client, url) for url in good_sources[:2]]
    assert all(poll_terminal(client, task)["status"] == "SUCCESS" for task in tasks)
    before = changed_by(start, requested=2, succeeded=2, deduplicated=2)
    wait_for_totals(client, stack, before)  # counted a moment after they finish

    replayed = subprocess.run(
        [sys.executable, "-m", "services.cli", "replay", "republish", "--topic", "thumbnail.requested", "--task-id", *tasks],
        env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=120,
    )
    assert replayed.returncode == 0, replayed.stderr

    # Each replayed task passes the stage twice more (its request and its outcome), under `replayed` only.
    wait_for_totals(client, stack, changed_by(before, replayed=4))


def test_kill_9_and_restart_keep_the_counts_exactly(client: httpx.Client, stack: Stack) -> None:
    before = stats(client)
    assert before["totals"]["requested"] > 0  # the tests above ran: there is something to lose

    stack.stop("stats", kill=True)
    down = client.get("/stats")
    assert down.status_code == 503 and down.json()["error"]["code"] == "STATS_UNAVAILABLE", down.text
    assert client.get("/health").status_code == 200
    stack.start("stats")
    wait_for(lambda: _answers(stack), WAIT_S, lambda: "stats stage not back:\n" + stack.log_tail("stats"))

    after = stats(client)
    assert after["totals"] == before["totals"]
    assert [w for w in after["windows"] if w["start"] in {b["start"] for b in before["windows"]}] == before["windows"]


def test_tasks_finished_while_the_stage_was_down_are_counted_when_it_returns(
        client: httpx.Client, stack: Stack, good_sources: list[str]) -> None:
    before = stats(client)["totals"]
    stack.stop("stats")
    task = submit(client, good_sources[0])  # the rest of the API works without the stats stage
    assert poll_terminal(client, task)["status"] == "SUCCESS"
    stack.start("stats")
    wait_for(lambda: _answers(stack), WAIT_S, lambda: "stats stage not back:\n" + stack.log_tail("stats"))
    wait_for_totals(client, stack, changed_by(before, requested=1, succeeded=1, deduplicated=1))


def test_every_instance_answers_with_the_same_counts(client: httpx.Client, stack: Stack) -> None:
    """Two members of the group: one holds the tables, and the other forwards GET /stats to it."""
    stack.start("stats-2")
    try:
        first = f"http://127.0.0.1:{stack.settings.stats_port}/stats"
        second = f"http://127.0.0.1:{stack.settings.stats_port + 10}/stats"

        def both_agree() -> bool:
            try:
                answers = [httpx.get(url, timeout=5) for url in (first, second)]
            except httpx.HTTPError:
                return False
            return all(a.status_code == 200 for a in answers) and answers[0].json()["totals"] == answers[1].json()["totals"]

        wait_for(both_agree, WAIT_S, lambda: "instances disagree:\n" + stack.log_tail("stats-2"), interval=0.5)
        before = stats(client)["totals"]
        assert httpx.get(second, timeout=5).json()["totals"] == before
    finally:
        stack.stop("stats-2")
