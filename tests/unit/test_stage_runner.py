"""The consumer edge with fakes: what happens to a record when it is bad, when a dependency is down for
a long time, when the dead-letter topic is unreachable, and when the edge itself breaks."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import pytest

from services.common import stage
from services.common.events import encode
from services.common.kafka import PublishError
from services.common.model import COMPLETED, DLQ, REQUESTED, Completed, Event, Outgoing, Record, Rendition, Requested
from services.common.settings import Settings
from tests.fakes import FakeConsumer, FakeMessage, FakePublisher

TASK = "6f1c2b7a-4d1e-4c3b-9a7e-1b2c3d4e5f60"
SHA = "ab" * 32


class FakeClock:
    """Stands in for asyncio.sleep: records each wait and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


def requested_record(offset: int = 0) -> Record:
    encoded = encode(Event(TASK, Requested("http://127.0.0.2/a.jpg"), "api"))
    return Record(REQUESTED, 0, offset, 0, TASK.encode(), encoded.value, encoded.headers)


def completed_output(event: Event) -> list[Outgoing]:
    return [Outgoing(event.follow(Completed(SHA, Rendition(), 1, "image/jpeg", 100, 75, 3000, False), "resizer"))]


def runner(publisher: FakePublisher, handler: stage.Handler, clock: FakeClock | None = None) -> stage.StageRunner:
    return stage.StageRunner("test", Settings(), publisher, handler, transient=(ConnectionError,),
                             sleep=(clock or FakeClock()).sleep)


async def no_outputs(_event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
    return []


def dead_letters(publisher: FakePublisher) -> list[dict[str, object]]:
    assert all(topic == DLQ for topic, _key, _value in publisher.records)
    return [json.loads(value) for _topic, _key, value in publisher.records]


async def test_an_undecodable_record_is_dead_lettered_with_its_reason() -> None:
    publisher = FakePublisher()
    record = Record(REQUESTED, 2, 41, 0, b"k", b"{not json")
    await runner(publisher, no_outputs).handle(record)
    [letter] = dead_letters(publisher)
    assert (letter["source_topic"], letter["partition"], letter["offset"], letter["stage"]) == (REQUESTED, 2, 41, "test")
    assert "JSON" in str(letter["reason"]) or "json" in str(letter["reason"])
    assert publisher.events == []


async def test_an_error_raised_by_the_core_parks_the_record() -> None:
    async def broken(_event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        raise KeyError("a bug met by one record")

    publisher = FakePublisher()
    await runner(publisher, broken).handle(requested_record())
    [letter] = dead_letters(publisher)
    assert str(letter["reason"]).startswith("unexpected KeyError")


async def test_an_outage_past_attempt_1024_is_waited_out_and_the_output_published_once() -> None:
    calls = 0

    async def cassandra_down_for_a_long_time(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        nonlocal calls
        calls += 1
        if calls <= 1100:
            raise ConnectionError("cassandra unreachable")
        return completed_output(event)

    publisher, clock = FakePublisher(), FakeClock()
    await runner(publisher, cassandra_down_for_a_long_time, clock).handle(requested_record())
    assert calls == 1101 and len(clock.waits) == 1100
    # capped (±50 % jitter around the cap) and never zero, however long the outage lasts
    assert max(clock.waits) <= stage.RETRY_CAP_S * 1.5 and min(clock.waits) > 0
    assert sum(w >= stage.RETRY_CAP_S / 2 for w in clock.waits[-100:]) == 100
    assert [e.type for e in publisher.events] == [COMPLETED] and publisher.records == []


async def test_outputs_are_republished_until_kafka_acknowledges_them() -> None:
    async def complete(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        return completed_output(event)

    publisher, clock = FakePublisher(failures=[PublishError("broker down")] * 7), FakeClock()
    await runner(publisher, complete, clock).handle(requested_record())
    assert len(clock.waits) == 7 and [e.type for e in publisher.events] == [COMPLETED]


async def test_a_dead_letter_is_retried_while_kafka_is_down_and_written_once() -> None:
    publisher, clock = FakePublisher(failures=[PublishError("broker down")] * 30), FakeClock()
    await runner(publisher, no_outputs, clock).handle(Record(REQUESTED, 0, 5, 0, None, b"\x00garbage"))
    assert len(clock.waits) == 30
    assert len(dead_letters(publisher)) == 1


async def test_an_error_of_the_edge_itself_propagates_instead_of_passing_for_handled() -> None:
    publisher = FakePublisher(failures=[RuntimeError("a bug in the dead-letter path")])
    with pytest.raises(RuntimeError):
        await runner(publisher, no_outputs).handle(Record(REQUESTED, 0, 5, 0, None, b"garbage"))


async def test_an_edge_failure_stops_the_stage_and_never_commits_past_the_record() -> None:
    good = requested_record()
    messages = [FakeMessage(REQUESTED, 0, n, value, good.key, good.headers)
                for n, value in enumerate([good.value, b"garbage", good.value, good.value])]
    consumer = FakeConsumer(messages)
    # Record 1 is undecodable; writing its dead letter fails with an error the edge does not expect.
    publisher = FakePublisher(failures=[RuntimeError("a bug in the dead-letter path")])
    subscription = stage.Subscription(Settings(), runner(publisher, no_outputs), [REQUESTED], concurrency=8,
                                      consumer=consumer)
    status = await asyncio.wait_for(stage.serve([subscription]), timeout=20)
    assert status == 1 and subscription.failed and consumer.closed
    assert consumer.commits, "the records before the failed one are committed"
    assert max(offset for _t, _p, offset in consumer.commits) == 1  # the failed record is delivered again


async def test_a_clean_run_commits_past_every_handled_record() -> None:
    good = requested_record()
    consumer = FakeConsumer([FakeMessage(REQUESTED, 0, n, good.value, good.key, good.headers) for n in range(3)])
    handled = asyncio.Event()
    stopping = asyncio.Event()
    seen = 0

    async def count(_event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        nonlocal seen
        seen += 1
        if seen == 3:
            handled.set()
        return []

    subscription = stage.Subscription(Settings(), runner(FakePublisher(), count), [REQUESTED], concurrency=8,
                                      consumer=consumer)
    running = asyncio.ensure_future(subscription.run(stopping))
    await asyncio.wait_for(handled.wait(), timeout=10)
    stopping.set()
    await asyncio.wait_for(running, timeout=20)
    assert not subscription.failed and consumer.closed
    assert max(offset for _t, _p, offset in consumer.commits) == 3


async def test_a_failed_publish_does_not_run_the_core_again() -> None:
    calls = 0

    async def complete_once(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        nonlocal calls
        calls += 1
        return completed_output(event)

    publisher = FakePublisher(failures=[PublishError("broker down")] * 3)
    await runner(publisher, complete_once).handle(requested_record())
    assert calls == 1 and [e.type for e in publisher.events] == [COMPLETED]


async def test_records_in_flight_are_bounded_by_their_bytes_too() -> None:
    good = requested_record()
    size = len(good.value or b"")
    consumer = FakeConsumer([FakeMessage(REQUESTED, 0, n, good.value, good.key, good.headers) for n in range(6)])
    stopping, release = asyncio.Event(), asyncio.Event()
    peak = in_flight = seen = 0

    async def hold(_event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
        nonlocal peak, in_flight, seen
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        seen += 1
        return []

    # Room for two records' bytes (and one more record): never more than three at once, though eight would fit.
    subscription = stage.Subscription(Settings(), runner(FakePublisher(), hold), [REQUESTED], concurrency=8,
                                      max_bytes=2 * size, consumer=consumer)
    running = asyncio.ensure_future(subscription.run(stopping))
    await asyncio.sleep(0.5)
    assert peak == 2  # the second record filled the room; the third waits for a slot to free
    release.set()
    for _ in range(100):
        if seen == 6:
            break
        await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(running, timeout=20)
    assert seen == 6 and peak <= 3
