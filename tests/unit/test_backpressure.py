"""Admission by backlog: the pure rule on a fake clock, the sampling task, and the 503 POST /thumbnail answers."""
import asyncio
import time

import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from services.api.app import create_app
from services.api.backlog_watch import watch
from services.api.backpressure import Backlog
from services.common.settings import Settings
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeTasks, FakeThumbnails


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fed(limit: int, *samples: tuple[float, int, int], clock: Clock | None = None) -> Backlog:
    """A backlog fed `samples` (seconds after the clock's start, lag, consumed), the clock left at the last one."""
    clock = clock or Clock()
    backlog, start = Backlog(limit, clock=clock), clock.now
    for after, lag, consumed in samples:
        clock.now = start + after
        backlog.record(clock.now, lag, consumed)
    return backlog


def test_accepts_under_the_limit_and_at_it() -> None:
    assert fed(100, (0, 40, 0), (1, 100, 10)).admit() is None


def test_accepts_before_any_sample() -> None:
    assert Backlog(100, clock=Clock()).admit() is None


def test_refuses_over_the_limit_with_retry_after_from_the_drain_rate() -> None:
    # 10 records/s drained; 300 behind, and Retry-After aims at half the limit: (300 - 50) / 10 = 25 s.
    backlog = fed(100, (0, 300, 1000), (5, 310, 1050), (10, 300, 1100))
    assert backlog.drain_rate() == 10.0
    assert backlog.admit() == 25


def test_retry_after_rounds_up_and_is_clamped() -> None:
    assert fed(100, (0, 101, 0), (10, 101, 1000)).admit() == 1  # (101 - 50) / 100 = 0.51 -> at least 1 s
    assert fed(100, (0, 5000, 0), (10, 5000, 10)).admit() == 60  # 4950 s at 1 record/s -> at most 60 s
    assert fed(100, (0, 200, 0), (4, 200, 60)).admit() == 10  # (200 - 50) / 15 = 10


def test_no_drain_answers_the_longest_wait() -> None:
    assert fed(100, (0, 500, 700), (5, 600, 700)).admit() == 60  # a stopped fetcher: offsets do not move
    assert fed(100, (0, 500, 700)).admit() == 60  # one sample: no rate to go by yet
    assert fed(100, (0, 500, 700), (5, 500, 0)).admit() == 60  # offsets went back (a rewound group): no drain


def test_the_rate_comes_from_the_recent_window_only() -> None:
    # Fast long ago, stalled for the last 30 s: the old pace must not promise a short wait.
    samples = [(0, 500, 0), (1, 500, 1000)] + [(float(t), 500, 1000) for t in range(2, 40)]
    backlog = fed(100, *samples)
    assert backlog.drain_rate() == 0.0 and backlog.admit() == 60


def test_stale_samples_fail_open() -> None:
    clock = Clock()
    backlog = fed(100, (0, 500, 0), (1, 500, 0), clock=clock)
    assert backlog.admit() == 60
    clock.now += 10
    assert backlog.admit() == 60  # 10 s old: still believed
    clock.now += 0.5
    assert backlog.admit() is None  # no reading for over 10 s: the lag is unknown, accept
    backlog.record(clock.now, 500, 0)
    assert backlog.admit() == 60  # a fresh reading counts again


@pytest.mark.parametrize("limit", [0, -1])
def test_off_when_the_limit_is_zero(limit: int) -> None:
    assert fed(limit, (0, 10**6, 0), (1, 10**6, 0)).admit() is None


def test_the_watch_records_readings_and_survives_failing_ones() -> None:
    readings: list[tuple[int, int] | Exception] = [(10, 0), ConnectionError("broker down"), (30, 5)]

    def read() -> tuple[int, int]:
        reading = readings.pop(0) if readings else (30, 5)
        if isinstance(reading, Exception):
            raise reading
        return reading

    clock = Clock()
    backlog = Backlog(20, clock=clock)

    async def run() -> None:
        task = asyncio.create_task(watch(backlog, read, interval_s=0.001, clock=clock))
        deadline = time.monotonic() + 5
        while (readings or backlog.admit() is None) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert not readings and backlog.admit() == 60  # the last reading: 30 > 20 and no drain over no time
    assert REGISTRY.get_sample_value("thumbs_backlog_records") == 30


def _rejections() -> float:
    return REGISTRY.get_sample_value("thumbs_backpressure_rejections_total") or 0.0


def test_post_answers_503_backlog_full_while_the_backlog_is_over_the_limit() -> None:
    lag = {"records": 50}
    publisher = FakePublisher()
    app = create_app(Settings(max_backlog=20), publisher=publisher, tasks=FakeTasks(), thumbnails=FakeThumbnails(),
                     idempotency_keys=FakeIdempotencyKeys(), lag_reader=lambda: (lag["records"], 0))
    before = _rejections()
    with TestClient(app) as client:
        body = {"source_image_url": "http://127.0.0.1:8000/a.jpg"}
        deadline = time.monotonic() + 5
        response = client.post("/thumbnail", json=body)
        while response.status_code == 202 and time.monotonic() < deadline:  # until the first reading is in
            time.sleep(0.01)
            response = client.post("/thumbnail", json=body)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "BACKLOG_FULL"
        assert response.headers["retry-after"] == "60"  # nothing drains in the fake
        assert _rejections() == before + 1
        published = len(publisher.events)
        assert client.post("/thumbnail", json={"source_image_url": 42}).status_code == 422  # bad input first
        lag["records"] = 5
        deadline = time.monotonic() + 5
        while response.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.01)
            response = client.post("/thumbnail", json=body)
        assert response.status_code == 202
        assert len(publisher.events) == published + 1  # a refused request published nothing
