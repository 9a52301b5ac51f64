"""SIGKILL each stage mid-load: every accepted task still ends SUCCESS, and nothing is rendered twice."""
from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.common.model import Completed

from .stack import ImageServer, Stack, completed_events, poll_terminal, running_stack
from .test_pipeline import photo

pytestmark = pytest.mark.integration

TASKS_PER_STAGE = 40


def with_comment(jpeg: bytes, text: str) -> bytes:
    """Same pixels, distinct bytes (a JPEG comment segment): a distinct image to the pipeline."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("crash")) as stack:
        yield stack


@pytest.mark.parametrize("victim", ["fetcher", "resizer", "projector"])
def test_killing_a_stage_mid_load_loses_nothing(victim: str, stack: Stack) -> None:
    images = ImageServer()
    base = photo(800, 600, seed=20)
    resizes_before = 0.0 if victim == "resizer" else stack.metric("resizer", "thumbs_resizes_total")
    try:
        with httpx.Client(base_url=stack.api, timeout=10) as client:
            task_ids = []
            for n in range(TASKS_PER_STAGE):
                url = images.add(f"/{victim}/{n}.jpg", with_comment(base, f"{victim}-{n}"))
                task_ids.append(client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"])
                if n == TASKS_PER_STAGE // 3:
                    stack.stop(victim, kill=True)  # SIGKILL: no clean shutdown, no final commit
            time.sleep(1.0)
            stack.start(victim)
            results = [poll_terminal(client, task_id, timeout=120) for task_id in task_ids]
        assert [r["status"] for r in results] == ["SUCCESS"] * TASKS_PER_STAGE
        assert len({r["source_sha256"] for r in results}) == TASKS_PER_STAGE
    finally:
        images.close()
    if victim != "resizer":  # its counter survives: exactly one render per distinct image
        assert stack.metric("resizer", "thumbs_resizes_total") - resizes_before == TASKS_PER_STAGE
    # A killed resizer restarts its counter, so count published renders instead: a re-delivered record that
    # rendered again after its thumbnail was stored would publish a second non-deduplicated completion.
    # (One killed between storing and publishing is answered as deduplicated on re-delivery: at most one.)
    shas = {r["source_sha256"] for r in results}
    renders = Counter(e.payload.source_sha256 for e in completed_events(stack.settings)
                      if isinstance(e.payload, Completed) and not e.payload.deduplicated and e.payload.source_sha256 in shas)
    assert max(renders.values()) == 1, renders.most_common(3)


def _render_processes(resizer_pid: int) -> list[int]:
    """The resizer's render processes: its children started by multiprocessing's spawn, not its resource tracker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == resizer_pid and "spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_render_process_killed_mid_load_fails_at_most_its_own_image(stack: Stack) -> None:
    """A render process that dies (a decoder crash, an out-of-memory kill) fails only the image it was rendering:
    the resizer keeps running, replaces the process and hands it the other images in flight."""
    images = ImageServer()
    base = photo(2400, 1600, seed=21)  # a few milliseconds a render: records queue up in flight
    resizer = stack.processes["resizer"]
    rendered_before = stack.metric("resizer", "thumbs_resizes_total")
    try:
        with httpx.Client(base_url=stack.api, timeout=10) as client:
            urls = [images.add(f"/render-kill/{n}.jpg", with_comment(base, f"render-kill-{n}")) for n in range(TASKS_PER_STAGE)]
            task_ids = [client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"] for url in urls]
            deadline = time.monotonic() + 60
            while stack.metric("resizer", "thumbs_resizes_total") - rendered_before < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            victims = _render_processes(resizer.pid)
            assert victims, "the resizer has no render process"
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            results = [poll_terminal(client, task_id, timeout=120) for task_id in task_ids]
    finally:
        images.close()
    failed = [r for r in results if r["status"] != "SUCCESS"]
    assert len(failed) <= len(victims), failed  # each dead process fails at most the image it was rendering
    assert all(r["error"]["code"] == "IMAGE_CORRUPT" for r in failed)
    assert resizer.poll() is None  # the stage kept serving
    assert set(_render_processes(resizer.pid)).isdisjoint(victims)  # replaced
    assert "starting another" in stack.log_tail("resizer", 200)
