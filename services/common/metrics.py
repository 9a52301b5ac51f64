"""Prometheus metrics shared by every process (each process serves its own /metrics)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

from .model import RETRY, Completed, Failed, Outgoing

EVENTS_IN = Counter("thumbs_events_in_total", "Records consumed, by stage and topic.", ["stage", "topic"])
EVENTS_OUT = Counter("thumbs_events_out_total", "Events produced, by stage and event type.", ["stage", "type"])
FAILURES = Counter("thumbs_failures_total", "Tasks failed, by stage and error code.", ["stage", "code"])
RETRIES = Counter("thumbs_retries_total", "Transient failures scheduled for another attempt.", ["stage"])
RESIZES = Counter("thumbs_resizes_total", "Thumbnails rendered (dedupe misses).")
DEDUPE_HITS = Counter("thumbs_dedupe_hits_total", "Tasks answered from an existing thumbnail.")
DEAD_LETTERS = Counter("thumbs_dead_letters_total", "Records sent to the dead-letter topic.", ["stage", "topic"])
INFRA_RETRIES = Counter("thumbs_infrastructure_retries_total", "Records retried because Kafka or Cassandra failed.", ["stage"])
STAGE_SECONDS = Histogram(
    "thumbs_stage_seconds", "Time to handle one record, outputs acknowledged.", ["stage"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_REQUESTS = Counter("thumbs_http_requests_total", "HTTP requests, by route, method and status.", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "thumbs_http_request_seconds", "HTTP request latency, by route and method.", ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def count_outputs(stage: str, outputs: list[Outgoing]) -> None:
    for out in outputs:
        EVENTS_OUT.labels(stage, out.event.type).inc()
        if out.topic == RETRY:
            RETRIES.labels(stage).inc()
        payload = out.event.payload
        if isinstance(payload, Failed):
            FAILURES.labels(stage, payload.code).inc()
        elif isinstance(payload, Completed):
            (DEDUPE_HITS if payload.deduplicated else RESIZES).inc()


def serve(host: str, port: int) -> None:
    if port:
        start_http_server(port, addr=host)
