"""Load for the pipeline benchmark: HTTP submitters and a Kafka watcher of terminal events."""
from __future__ import annotations

import asyncio
import math
import statistics
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import aiohttp
from confluent_kafka import Consumer, KafkaException, TopicPartition


@dataclass(frozen=True)
class Call:
    """One HTTP request: when it was sent and answered (perf_counter), its status, and the task id if any."""

    started: float
    finished: float
    status: int
    task_id: str | None = None

    @property
    def seconds(self) -> float:
        return self.finished - self.started


class Completions:
    """Records when each task's completed or failed event reaches Kafka, without touching the API.

    Assigned to every partition from the end offsets read in `start()`, so it sees exactly the events
    produced after that call; the key of both topics is the task id.
    """

    def __init__(self, bootstrap: str, completed_topic: str, failed_topic: str) -> None:
        self._topics = {completed_topic: "SUCCESS", failed_topic: "FAILURE"}
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 20, "fetch.message.max.bytes": 1 << 20,
        })
        self.seen: dict[str, tuple[float, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="completions", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        partitions = []
        for topic in self._topics:
            metadata = self._consumer.list_topics(topic, timeout=timeout).topics[topic]
            for number in metadata.partitions:
                _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, number), timeout=timeout)
                partitions.append(TopicPartition(topic, number, high))
        self._consumer.assign(partitions)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def wait(self, task_ids: Iterable[str], timeout: float) -> bool:
        """True once every task is terminal; False after `timeout` seconds."""
        pending = set(task_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = {task for task in pending if task not in self.seen}
            if not pending:
                return True
            time.sleep(0.05)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._consumer.poll(0.1)
            except KafkaException:
                continue
            if message is None or message.error() or message.key() is None:
                continue
            # setdefault: a re-delivered event must not move a task's completion time.
            self.seen.setdefault(message.key().decode(), (time.perf_counter(), self._topics[message.topic()]))


async def _post(session: aiohttp.ClientSession, api: str, source_url: str) -> Call:
    started = time.perf_counter()
    try:
        async with session.post(f"{api}/thumbnail", json={"source_image_url": source_url}) as response:
            body = await response.json(content_type=None) if response.status == 202 else None
            return Call(started, time.perf_counter(), response.status, body and body.get("task_id"))
    except (TimeoutError, aiohttp.ClientError):
        return Call(started, time.perf_counter(), 0)


async def _get(session: aiohttp.ClientSession, url: str) -> Call:
    started = time.perf_counter()
    try:
        async with session.get(url) as response:
            await response.read()
            return Call(started, time.perf_counter(), response.status)
    except (TimeoutError, aiohttp.ClientError):
        return Call(started, time.perf_counter(), 0)


def _session(concurrency: int, timeout: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=aiohttp.ClientTimeout(total=timeout),
    )


async def _closed_loop(calls: Sequence[object], concurrency: int, timeout: float, call: object) -> list[Call]:
    """`concurrency` clients, each sending its next request as soon as the previous one is answered."""
    results: list[Call] = []
    queue = iter(calls)
    async with _session(concurrency, timeout) as session:
        async def client() -> None:
            for item in queue:
                results.append(await call(session, item))  # type: ignore[operator]
        await asyncio.gather(*(client() for _ in range(concurrency)))
    return results


def post_all(api: str, urls: Sequence[str], concurrency: int, timeout: float = 30.0) -> list[Call]:
    return asyncio.run(_closed_loop(urls, concurrency, timeout, lambda s, url: _post(s, api, url)))


def get_all(urls: Sequence[str], concurrency: int, timeout: float = 30.0) -> list[Call]:
    return asyncio.run(_closed_loop(urls, concurrency, timeout, _get))


def post_paced(api: str, urls: Sequence[str], rate: float, timeout: float = 30.0, concurrency: int = 256) -> list[Call]:
    """Open loop: request i is sent at start + i / rate whether or not earlier ones were answered."""
    async def run() -> list[Call]:
        async with _session(concurrency, timeout) as session:
            start = time.perf_counter()

            async def at(index: int, url: str) -> Call:
                await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
                return await _post(session, api, url)
            return list(await asyncio.gather(*(at(i, url) for i, url in enumerate(urls))))
    return asyncio.run(run())


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    ms = [s * 1000 for s in seconds]
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "p99": percentile(ms, 99),
            "max": max(ms) if ms else None, "mean": statistics.fmean(ms) if ms else None}


def rate(calls: Sequence[Call]) -> float:
    """Requests answered per second of wall time between the first send and the last answer."""
    if not calls:
        return 0.0
    span = max(c.finished for c in calls) - min(c.started for c in calls)
    return len(calls) / span if span > 0 else 0.0
