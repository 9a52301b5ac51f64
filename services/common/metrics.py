"""Prometheus metrics shared by every process (each process serves its own /metrics)."""
from __future__ import annotations

from importlib.metadata import version

from prometheus_client import Counter, Gauge, Histogram

from .model import RETRY, WEBHOOK_RETRY, Completed, Failed, Outgoing

EVENTS_IN = Counter("thumbs_events_in_total", "Records consumed, by stage and topic.", ["stage", "topic"])
EVENTS_OUT = Counter("thumbs_events_out_total", "Events produced, by stage and event type.", ["stage", "type"])
FAILURES = Counter("thumbs_failures_total", "Tasks failed, by stage and error code.", ["stage", "code"])
RETRIES = Counter("thumbs_retries_total", "Transient failures scheduled for another attempt.", ["stage"])
RESIZES = Counter("thumbs_resizes_total", "Renditions rendered (dedupe misses).")
DEDUPE_HITS = Counter("thumbs_dedupe_hits_total", "Renditions answered from existing thumbnails.")
DEAD_LETTERS = Counter("thumbs_dead_letters_total", "Records sent to the dead-letter topic.", ["stage", "topic"])
INFRA_RETRIES = Counter("thumbs_infrastructure_retries_total", "Records retried because Kafka or Cassandra failed.", ["stage"])
STAGE_SECONDS = Histogram(
    "thumbs_stage_seconds", "Time to handle one record, outputs acknowledged.", ["stage"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "thumbs_consumer_lag", "Records between the group's committed offset and the partition's end, per assigned partition.",
    ["stage", "topic", "partition"],
)
IN_FLIGHT = Gauge("thumbs_records_in_flight", "Records taken from Kafka and not yet handled.", ["stage"])
# multiprocess_mode: how the API's worker processes (THUMBS_API_WORKERS > 1) add up; ignored in one process.
STAGE_READY = Gauge("thumbs_stage_ready", "1 while the process is ready (what /readyz or /ready answers).", ["stage"],
                    multiprocess_mode="livemostrecent")  # what /ready answered last
BUILD_INFO = Gauge("thumbs_build_info", "Always 1; the labels say what runs.", ["stage", "version", "renderer_version"],
                   multiprocess_mode="livemax")
DOWNLOAD_BYTES = Histogram(
    "thumbs_download_bytes", "Size of each downloaded source image.",
    buckets=tuple(float(2**n) for n in range(10, 26, 2)),  # 1 KiB .. 32 MiB
)
DOWNLOAD_SECONDS = Histogram(
    "thumbs_download_seconds", "Time to download a source, redirects included, by outcome (ok or an error code).", ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CASSANDRA_SECONDS = Histogram(
    "thumbs_cassandra_request_seconds", "Cassandra request latency, by process and operation.", ["stage", "operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
TASK_SECONDS = Histogram(
    "thumbs_task_seconds", "End-to-end task latency, from the request to its terminal status (observed by the projector).",
    ["status"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
)
HTTP_REQUESTS = Counter("thumbs_http_requests_total", "HTTP requests, by route, method and status.", ["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "thumbs_http_request_seconds", "HTTP request latency, by route and method.", ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

BACKPRESSURE_REJECTIONS = Counter(
    "thumbs_backpressure_rejections_total", "POST /thumbnail requests refused with 503 because the fetchers' backlog was full."
)
API_THUMBNAIL_CACHE = Counter("thumbs_api_thumbnail_cache_total", "Thumbnail lookups of the API, by outcome.", ["outcome"])
HELD_REQUESTS = Gauge(
    "thumbs_api_held_requests", "Requests the API process holds open: event streams (`events`) and waits (`wait`).", ["kind"],
    multiprocess_mode="livesum",
)
BACKLOG_RECORDS = Gauge("thumbs_backlog_records", "The fetchers' lag on thumbnail.requested, as the API last read it.",
                        multiprocess_mode="livemax")
WEBHOOK_DELIVERIES = Counter(
    "thumbs_webhook_deliveries_total", "Completion webhook attempts, by outcome: delivered, retried or failed (given up).",
    ["outcome"],
)
WEBHOOK_OUTCOMES = ("delivered", "retried", "failed")
FETCH_RESERVED_BYTES = Gauge(
    "thumbs_fetch_reserved_bytes", "Bytes of the fetcher's THUMBS_FETCH_MEMORY_BYTES held by downloads and not yet published."
)
STATS_RECORDS = Counter(
    "thumbs_stats_records_total", "Records the stats stage read, by outcome: observed, counted, duplicate "
    "(already counted: a re-read after a crash or rebalance) or invalid (not an event; left out).", ["outcome"],
)


def count_outputs(stage: str, outputs: list[Outgoing]) -> None:
    for out in outputs:
        EVENTS_OUT.labels(stage, out.event.type).inc()
        if out.topic in (RETRY, WEBHOOK_RETRY):
            RETRIES.labels(stage).inc()
            continue  # an outcome waiting to be notified again is no new failure or render
        payload = out.event.payload
        if isinstance(payload, Failed):
            FAILURES.labels(stage, payload.code).inc()
        elif isinstance(payload, Completed):
            for rendered in payload.rendered:
                (DEDUPE_HITS if rendered.deduplicated else RESIZES).inc()


_process = {"stage": ""}


def identify(stage: str, renderer_version: int) -> None:
    """Names the process in the metrics that are not per stage by nature (Cassandra latency, build info)."""
    _process["stage"] = stage
    BUILD_INFO.labels(stage, version("thumbs"), str(renderer_version)).set(1)


def start_series(stage: str, topics: list[str]) -> None:
    """Creates a stage's labelled series at 0: a rate over a series that appears only with its first
    event misses that event, and an alert on dead letters must see the counter before the first one."""
    for topic in topics:
        EVENTS_IN.labels(stage, topic)
        DEAD_LETTERS.labels(stage, topic)
    RETRIES.labels(stage)
    INFRA_RETRIES.labels(stage)
    IN_FLIGHT.labels(stage)


def process_stage() -> str:
    return _process["stage"]
