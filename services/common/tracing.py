"""Traces: one per API request, carried through Kafka in the W3C `traceparent` header, so that every stage's
span for a task joins the trace of the request that began it (and a replayed record's spans join it again,
marked `thumbs.replayed`).

Off unless the standard variables ask for an exporter: OTEL_TRACES_EXPORTER (`otlp`, `console`, or both,
comma-separated) or an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
The rest (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_*)
is read by the SDK itself. Off, no span is made and the trace headers that came in go out unchanged.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

__all__ = ["Span", "TRACE_HEADERS", "carried", "configure", "enabled", "install", "outcome", "record_span", "request_span"]

from .settings import SettingsError

TRACE_HEADERS = ("traceparent", "tracestate")
_state: dict[str, trace.Tracer | None] = {"tracer": None}


def configure(process: str, environ: Mapping[str, str] | None = None) -> bool:
    """Installs the SDK when the environment asks for an exporter; returns whether tracing is on."""
    environ = os.environ if environ is None else environ
    chosen = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true" or chosen == ["none"] or not (chosen or endpoint):
        return False
    # Imported here: a process with tracing off never loads the SDK or the exporter.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    exporters: dict[str, type[SpanExporter]] = {"otlp": OTLPSpanExporter, "console": ConsoleSpanExporter}
    unknown = set(chosen or ["otlp"]) - set(exporters)
    if unknown:
        raise SettingsError(f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(sorted(unknown))} (use otlp, console or none)")
    # An explicit OTEL_SERVICE_NAME wins; otherwise each process names itself.
    named = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": f"thumbs-{process}"}
    provider = TracerProvider(resource=Resource.create(named))
    for name in chosen or ["otlp"]:
        provider.add_span_processor(BatchSpanProcessor(exporters[name]()))
    install(provider)
    return True


def install(provider: trace.TracerProvider | None) -> None:
    """Traces with `provider` from now on; None turns tracing off (tests install one with an in-memory exporter).
    Kept here rather than as OpenTelemetry's global, which can be set only once per process."""
    _state["tracer"] = provider.get_tracer("thumbs") if provider is not None else None


def enabled() -> bool:
    return _state["tracer"] is not None


def _tracer() -> trace.Tracer:
    tracer = _state["tracer"]
    assert tracer is not None
    return tracer


@contextmanager
def request_span(method: str, route: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
    """The API's span for one HTTP request; a caller's own `traceparent` makes it a child of the caller's trace."""
    if not enabled():
        yield None
        return
    parent = propagate.extract(headers)
    with _tracer().start_as_current_span(f"{method} {route}", context=parent, kind=SpanKind.SERVER,
                                         attributes={"http.request.method": method, "http.route": route}) as span:
        yield span


@contextmanager
def record_span(stage: str, topic: str, partition: int, offset: int, headers: Sequence[tuple[str, bytes]],
                *, replayed: bool) -> Iterator[Span | None]:
    """A stage's span for one consumed record, a child of the span that produced it."""
    if not enabled():
        yield None
        return
    carrier = {name: value.decode("latin-1") for name, value in headers if name in TRACE_HEADERS}
    attributes: dict[str, str | int | bool] = {
        "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.destination.name": topic,
        "messaging.destination.partition.id": str(partition), "messaging.kafka.offset": offset,
        "thumbs.stage": stage, "thumbs.replayed": replayed,
    }
    with _tracer().start_as_current_span(f"{stage} process {topic}", context=propagate.extract(carrier),
                                         kind=SpanKind.CONSUMER, attributes=attributes) as span:
        yield span


def outcome(span: Span | None, result: str, *, failed: bool = False, **attributes: str) -> None:
    """Records how a record or request ended on its span (no-op without one)."""
    if span is None:
        return
    span.set_attribute("thumbs.outcome", result)
    for name, value in attributes.items():
        span.set_attribute(f"thumbs.{name}", value)
    if failed:
        span.set_status(Status(StatusCode.ERROR, result))


def carried(incoming: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The trace headers for records produced now: the current span's when tracing is on, else the incoming ones."""
    if not enabled():
        return [(name, value) for name, value in incoming if name in TRACE_HEADERS]
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(name, value.encode()) for name, value in carrier.items() if name in TRACE_HEADERS]
