"""What the consumer edge adds for operators: headers carried onward, spans per record, lag from librdkafka
statistics, end-to-end latency at the projector, and the task context on every log line."""
from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Mapping

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from services.common import logs, metrics, stage, tracing
from services.common.events import encode
from services.common.model import (
    REPLAY_HEADER,
    REQUESTED,
    REQUESTED_AT_HEADER,
    Completed,
    Event,
    Failed,
    Outgoing,
    Record,
    Rendition,
    Requested,
)
from services.common.settings import Settings
from services.projector.worker import observe_latency
from tests.fakes import FakePublisher

TASK = "6f1c2b7a-4d1e-4c3b-9a7e-1b2c3d4e5f60"
SHA = "ab" * 32
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def requested(headers: tuple[tuple[str, bytes], ...] = (), occurred_at: str = "2026-12-01T10:00:00.250000Z") -> Record:
    encoded = encode(Event(TASK, Requested("http://127.0.0.2/a.jpg"), "api", occurred_at=occurred_at, correlation_id="corr-1"))
    return Record(REQUESTED, 1, 7, 0, TASK.encode(), encoded.value, (*encoded.headers, *headers))


async def completes(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
    return [Outgoing(event.follow(Completed(SHA, Rendition(), 1, "image/jpeg", 100, 75, 3000, False), "resizer"))]


async def fails(event: Event, _headers: Mapping[str, bytes]) -> list[Outgoing]:
    return [Outgoing(event.follow(Failed("fetcher", "SOURCE_NOT_FOUND", "origin answered 404"), "fetcher"))]


def runner(publisher: FakePublisher, handler: stage.Handler) -> stage.StageRunner:
    return stage.StageRunner("fetcher", Settings(), publisher, handler)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)


async def test_the_first_stage_stamps_the_request_time_from_the_requested_event() -> None:
    publisher = FakePublisher()
    await runner(publisher, completes).handle(requested())
    [headers] = publisher.event_headers
    assert dict(headers)[REQUESTED_AT_HEADER] == b"1796119200250"  # 2026-12-01T10:00:00.250Z in Unix ms


async def test_request_time_replay_mark_and_trace_context_travel_on_unchanged_when_tracing_is_off() -> None:
    carried = ((REQUESTED_AT_HEADER, b"1700000000000"), (REPLAY_HEADER, b"2026-12-01T11:00:00Z"),
               ("traceparent", TRACEPARENT.encode()), ("unrelated", b"x"))
    publisher = FakePublisher()
    await runner(publisher, completes).handle(requested(carried))
    headers = dict(publisher.event_headers[0])
    assert headers[REQUESTED_AT_HEADER] == b"1700000000000"
    assert headers[REPLAY_HEADER] == b"2026-12-01T11:00:00Z"
    assert headers["traceparent"] == TRACEPARENT.encode()
    assert "unrelated" not in headers


def test_a_cores_own_header_wins_over_a_carried_one() -> None:
    merged = stage._merged([("traceparent", b"own")], [("traceparent", b"carried"), (REPLAY_HEADER, b"t")])
    assert merged == [("traceparent", b"own"), (REPLAY_HEADER, b"t")]


async def test_a_record_span_joins_the_producers_trace_and_its_outputs_carry_the_span_on(spans: InMemorySpanExporter) -> None:
    publisher = FakePublisher()
    await runner(publisher, completes).handle(requested((("traceparent", TRACEPARENT.encode()),)))
    [span] = spans.get_finished_spans()
    assert span.kind == SpanKind.CONSUMER and span.name == f"fetcher process {REQUESTED}"
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert f"{span.parent.span_id:016x}" == TRACEPARENT.split("-")[2]
    assert span.attributes is not None
    assert span.attributes["thumbs.task_id"] == TASK and span.attributes["thumbs.replayed"] is False
    assert span.attributes["messaging.kafka.offset"] == 7
    onward = dict(publisher.event_headers[0])["traceparent"].decode().split("-")
    assert onward[1] == TRACEPARENT.split("-")[1] and onward[2] == f"{span.context.span_id:016x}"


async def test_a_replayed_record_and_a_failure_are_marked_on_the_span(spans: InMemorySpanExporter) -> None:
    await runner(FakePublisher(), fails).handle(requested(((REPLAY_HEADER, b"2026-12-01T11:00:00Z"),)))
    [span] = spans.get_finished_spans()
    assert span.attributes is not None and span.attributes["thumbs.replayed"] is True
    assert span.status.status_code == StatusCode.ERROR


async def test_a_dead_lettered_record_ends_its_span_in_error(spans: InMemorySpanExporter) -> None:
    await runner(FakePublisher(), completes).handle(Record(REQUESTED, 0, 3, 0, b"k", b"{not json"))
    [span] = spans.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None and span.attributes["thumbs.outcome"] == "dead_letter"


def test_nothing_is_traced_while_tracing_is_off() -> None:
    assert not tracing.enabled()
    with tracing.record_span("fetcher", REQUESTED, 0, 0, (), replayed=False) as span:
        assert span is None
    assert tracing.carried([("traceparent", b"x"), ("other", b"y")]) == [("traceparent", b"x")]


def test_tracing_turns_on_only_when_the_environment_names_an_exporter() -> None:
    assert not tracing.configure("fetcher", {})
    assert not tracing.configure("fetcher", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert not tracing.configure("fetcher", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    with pytest.raises(ValueError, match="unknown exporter"):
        tracing.configure("fetcher", {"OTEL_TRACES_EXPORTER": "zipkin"})
    try:
        assert tracing.configure("fetcher", {"OTEL_TRACES_EXPORTER": "console"})
        assert tracing.enabled()
    finally:
        tracing.install(None)


def _lag(stage_name: str, topic: str, partition: str) -> float | None:
    wanted = {"stage": stage_name, "topic": topic, "partition": partition}
    return next((s.value for s in metrics.CONSUMER_LAG.collect()[0].samples if s.labels == wanted), None)


def test_consumer_lag_comes_from_librdkafka_statistics_for_fetched_partitions_only() -> None:
    report = {"topics": {"t.requested": {"partitions": {
        "0": {"fetch_state": "active", "consumer_lag": 12},
        "1": {"fetch_state": "none", "consumer_lag": -1},  # not this member's
        "2": {"fetch_state": "active", "consumer_lag": -1},  # not known yet
        "-1": {"fetch_state": "none", "consumer_lag": -1},  # librdkafka's internal unassigned partition
    }}}}
    stage.record_lag("lagtest", json.dumps(report))
    assert _lag("lagtest", "t.requested", "0") == 12
    assert _lag("lagtest", "t.requested", "1") is None and _lag("lagtest", "t.requested", "2") is None
    stage._forget_lag("lagtest", [("t.requested", 0), ("t.requested", 5)])  # a partition moved away
    assert _lag("lagtest", "t.requested", "0") is None
    stage.record_lag("lagtest", "{truncated")  # a bad report changes nothing and raises nothing


def _latency_count(status: str) -> float:
    return next(s.value for s in metrics.TASK_SECONDS.collect()[0].samples
                if s.name == "thumbs_task_seconds_count" and s.labels == {"status": status})


def test_the_projector_observes_request_to_outcome_latency_for_live_outcomes_only() -> None:
    done = Event(TASK, Completed(SHA, Rendition(), 1, "image/jpeg", 100, 75, 3000, False), "resizer",
                 occurred_at="2026-12-01T10:00:02.750000Z")
    observe_latency(done, {REQUESTED_AT_HEADER: b"1796119200250"})
    before = _latency_count("SUCCESS")
    observe_latency(done, {REQUESTED_AT_HEADER: b"1796119200250"})
    assert _latency_count("SUCCESS") == before + 1
    observe_latency(done, {REQUESTED_AT_HEADER: b"1796119200250", REPLAY_HEADER: b"x"})  # replayed: its age again
    observe_latency(done, {})  # an older producer's record
    observe_latency(done, {REQUESTED_AT_HEADER: b"soon"})
    assert _latency_count("SUCCESS") == before + 1
    total = next(s.value for s in metrics.TASK_SECONDS.collect()[0].samples
                 if s.name == "thumbs_task_seconds_sum" and s.labels == {"status": "SUCCESS"})
    assert total == pytest.approx(2 * 2.5)


async def test_every_line_logged_while_handling_a_record_names_its_task() -> None:
    stream = io.StringIO()
    handler = logs.configure(process="fetcher-2", log_format="json", stream=stream)
    try:
        await runner(FakePublisher(), fails).handle(requested())
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    [failure] = [line for line in lines if line["message"].startswith("task failed")]
    assert failure["task_id"] == TASK and failure["error_code"] == "SOURCE_NOT_FOUND"
    assert (failure["process"], failure["stage"], failure["topic"], failure["partition"], failure["offset"]) == (
        "fetcher-2", "fetcher", REQUESTED, 1, 7)
    assert failure["event_type"] == REQUESTED and failure["level"] == "WARNING" and failure["correlation_id"] == "corr-1"


def test_text_lines_show_the_process_and_the_bound_context() -> None:
    stream = io.StringIO()
    handler = logs.configure(process="resizer", log_format="text", stream=stream)
    try:
        with logs.bound(task_id=TASK, offset=3):
            logging.getLogger("services.x").warning("slow render")
        logging.getLogger("services.x").warning("outside")
    finally:
        logging.getLogger().removeHandler(handler)
    inside, outside = stream.getvalue().splitlines()
    assert "WARNING [resizer] services.x: slow render" in inside and inside.endswith(f"task_id={TASK} offset=3")
    assert outside.endswith("services.x: outside")


def test_auto_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert logs.uses_json("auto", io.StringIO()) and not logs.uses_json("auto", Terminal())
    assert logs.uses_json("json", Terminal()) and not logs.uses_json("text", io.StringIO())
