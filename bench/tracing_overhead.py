"""What tracing costs a stage per record: the edge with tracing off (the default), on, and with no tracing code.

Run from the repository root: `python bench/tracing_overhead.py [--records N] [--rounds R]`. A StageRunner
handles N small `thumbnail.requested` records with a core that answers one event, through an in-process
publisher, so that what is measured is the edge itself (decode, log context, span, headers, metrics), not
Kafka or an image. The three variants run interleaved in each round; figures are medians over rounds.

- `no tracing code`: tracing's entry points replaced by no-ops: the edge as it was before traces existed.
- `off`: as shipped, no OTEL_* variables set.
- `on`: an SDK tracer provider with the batch processor, exporting to a sink that drops the spans.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `services` importable from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from services.common import stage, tracing
from services.common.events import encode
from services.common.model import Event, Hashed, Outgoing, Record, Requested
from services.common.settings import Settings


class _Sink(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Publisher:
    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        pass

    async def publish_event(self, event: Event, headers: Any = None, *, topic: str | None = None) -> None:
        pass


async def _core(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
    assert isinstance(event.payload, Requested)
    hashed = Hashed(event.payload.source_url, "0" * 64, "image/jpeg", 123_456)
    return [Outgoing(event.follow(hashed, "fetcher"))]


@contextmanager
def _no_span(*_args: object, **_kwargs: object) -> Iterator[None]:
    yield None


@contextmanager
def _untraced() -> Iterator[None]:
    """Tracing's entry points as no-ops, restored after."""
    saved = tracing.record_span, tracing.outcome, tracing.carried
    tracing.record_span = _no_span  # type: ignore[assignment]
    tracing.outcome = lambda *_a, **_k: None  # type: ignore[assignment]
    tracing.carried = lambda incoming: []  # type: ignore[assignment]
    try:
        yield
    finally:
        tracing.record_span, tracing.outcome, tracing.carried = saved


def _records(count: int) -> list[Record]:
    records = []
    for offset in range(count):
        event = Event(str(uuid.uuid4()), Requested(f"https://images.example.com/{offset}.jpg"), producer="api")
        encoded = encode(event)
        records.append(Record("thumbnail.requested", 0, offset, 0, event.task_id.encode(), encoded.value, encoded.headers))
    return records


def _run(runner: stage.StageRunner, records: list[Record]) -> float:
    async def handle_all() -> None:
        for record in records:
            await runner.handle(record)

    started = time.perf_counter()
    asyncio.run(handle_all())
    return (time.perf_counter() - started) / len(records) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    runner = stage.StageRunner("fetcher", Settings.from_env({}), _Publisher(), _core)
    records = _records(args.records)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Sink()))
    timings: dict[str, list[float]] = {"no tracing code": [], "off": [], "on": []}
    _run(runner, records[:500])  # warm-up: imports, caches, the validators
    for _ in range(args.rounds):
        with _untraced():
            timings["no tracing code"].append(_run(runner, records))
        tracing.install(None)
        timings["off"].append(_run(runner, records))
        tracing.install(provider)
        timings["on"].append(_run(runner, records))
        tracing.install(None)
    provider.shutdown()

    off_path = _off_path_ns(records[0])
    base = statistics.median(timings["no tracing code"])
    print(f"{args.records} records x {args.rounds} rounds, median microseconds of edge CPU per record")
    for name, values in timings.items():
        median = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"  {name:16} {median:7.1f} us  (range {spread})  {median / base:.3f}x  {median - base:+.1f} us")
    print(f"tracing's calls per record when off, alone: {off_path:.0f} ns (median of 9 x 100,000)")


def _off_path_ns(record: Record) -> float:
    """The calls the edge makes into tracing for one record, with tracing off, timed on their own."""
    tracing.install(None)

    def once() -> None:
        with tracing.record_span("fetcher", record.topic, record.partition, record.offset, record.headers,
                                 replayed=False) as span:
            tracing.outcome(span, "thumbnail.hashed")
            tracing.carried(record.headers)

    samples = []
    for _ in range(9):
        started = time.perf_counter_ns()
        for _ in range(100_000):
            once()
        samples.append((time.perf_counter_ns() - started) / 100_000)
    return statistics.median(samples)


if __name__ == "__main__":
    main()
