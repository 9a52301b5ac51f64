"""Backpressure on a running stack: a stopped fetcher fills the backlog, POST /thumbnail answers 503 BACKLOG_FULL
with a Retry-After, and once the fetcher runs again requests are accepted and every accepted one completes."""
from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from services.api.backlog_watch import fetcher_lag_reader

from .stack import ImageServer, Stack, poll_terminal, running_stack

pytestmark = pytest.mark.integration
MAX_BACKLOG = 20
MAX_POSTS, MAX_SECONDS = 300, 60.0


@pytest.fixture
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path: Path) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path, MAX_BACKLOG=str(MAX_BACKLOG)) as stack:
        yield stack


def _tiny_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 40, 40)).save(out, "JPEG")
    return out.getvalue()


def test_a_full_backlog_refuses_posts_until_the_fetcher_catches_up(stack: Stack, images: ImageServer) -> None:
    body = {"source_image_url": images.add("/backpressure.jpg", _tiny_jpeg())}  # one source: dedupe keeps it cheap
    accepted: list[str] = []
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        first = client.post("/thumbnail", json=body)
        assert first.status_code == 202, first.text
        assert poll_terminal(client, first.json()["task_id"])["status"] == "SUCCESS"  # the fetcher consumes
        rejected_before = stack.metric("api", "thumbs_backpressure_rejections_total")
        # The fetcher commits about once a second: stopped before it commits the first record, the backlog
        # would count that record too, and the limit would be reached one POST early.
        read_lag = fetcher_lag_reader(stack.settings)
        deadline = time.monotonic() + MAX_SECONDS
        while read_lag()[0] != 0:
            assert time.monotonic() < deadline, "the fetcher never committed the first record:\n" + stack.log_tail(
                "fetcher")
            time.sleep(0.2)

        fetcher = stack.processes["fetcher"]
        os.kill(fetcher.pid, signal.SIGSTOP)  # the backlog can only grow
        try:
            refused = None
            deadline = time.monotonic() + MAX_SECONDS
            for _ in range(MAX_POSTS):
                response = client.post("/thumbnail", json=body)
                if response.status_code == 503:
                    refused = response
                    break
                assert response.status_code == 202, response.text
                accepted.append(response.json()["task_id"])
                assert time.monotonic() < deadline, "no 503 in time"
                time.sleep(0.02)
            assert refused is not None, f"no 503 after {len(accepted)} accepted requests"
            assert len(accepted) > MAX_BACKLOG  # refused only once the limit was passed
            assert refused.json()["error"]["code"] == "BACKLOG_FULL", refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            assert stack.metric("api", "thumbs_backpressure_rejections_total") > rejected_before
            assert stack.metric("api", "thumbs_backlog_records") > MAX_BACKLOG
        finally:
            os.kill(fetcher.pid, signal.SIGCONT)

        deadline = time.monotonic() + MAX_SECONDS
        while True:  # the fetcher drains the backlog; the API reads the lag every second
            response = client.post("/thumbnail", json=body)
            if response.status_code == 202:
                accepted.append(response.json()["task_id"])
                break
            assert response.status_code == 503, response.text
            assert time.monotonic() < deadline, "still refused after the fetcher resumed:\n" + stack.log_tail("fetcher")
            time.sleep(0.5)

        outcomes = {task_id: poll_terminal(client, task_id)["status"] for task_id in accepted}
        assert set(outcomes.values()) == {"SUCCESS"}, outcomes
    assert "Traceback" not in stack.log_tail("api", 500)
