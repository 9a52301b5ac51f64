"""What an operator sees of a running stack: one trace per task across the processes, probes that tell a stuck
stage from a healthy one, every metric the dashboard and the alerts use, and JSON log lines naming the task."""
from __future__ import annotations

import http.server
import io
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from PIL import Image

from services.common.settings import PREFIX
from tests.observability import metric_names_used

from .stack import ImageServer, Stack, poll_terminal, running_stack, wait_for

pytestmark = pytest.mark.integration
STAGES = ("fetcher", "resizer", "projector", "notifier")


class TraceReceiver:
    """An OTLP/HTTP trace endpoint on loopback keeping every span it is sent: (service name, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, object]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in request.resource_spans:
                    service = next((a.value.string_value for a in resource_spans.resource.attributes
                                    if a.key == "service.name"), "")
                    for scope_spans in resource_spans.scope_spans:
                        receiver.spans.extend((service, span) for span in scope_spans.spans)
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1/traces"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[TraceReceiver]:
    receiver = TraceReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], receiver: TraceReceiver,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    exporting = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                 "OTEL_BSP_SCHEDULE_DELAY": "200"}  # batches sent every 0.2 s, not every 5
    # The notifier too: the webhook alert and panel read its counter, which it serves at 0 from its start.
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("observed"), names=("api", *STAGES),
                       process_env=exporting, LOG_FORMAT="json", WEBHOOK_SECRET="observability-webhook-secret") as stack:
        for stage in STAGES:
            wait_for(lambda s=stage: _probe(stack, s, "/readyz") == 200, 60, lambda s=stage: stack.log_tail(s))
        yield stack


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (320, 200), (40, 120, 200)).save(out, "JPEG")
    return out.getvalue()


def _metrics_port(stack: Stack, stage: str) -> int:
    return stack.settings.api_port if stage == "api" else int(stack.env[f"{PREFIX}{stage.upper()}_METRICS_PORT"])


def _probe(stack: Stack, stage: str, path: str, timeout: float = 2.0) -> int | None:
    """The probe's status code, or None when it does not answer in time (as a kubelet sees a hung process)."""
    try:
        return httpx.get(f"http://127.0.0.1:{_metrics_port(stack, stage)}{path}", timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def _log_lines(stack: Stack, name: str) -> list[dict]:
    path = stack.settings.state_dir / f"{name}.log"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.startswith("{")]
    return [json.loads(line) for line in lines]


def test_one_trace_spans_the_api_and_every_stage(stack: Stack, images: ImageServer, receiver: TraceReceiver) -> None:
    url = images.add("/traced.jpg", _jpeg())
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
        assert poll_terminal(client, task_id)["status"] == "SUCCESS"

    def spans_of_task() -> dict[str, list]:
        tasked = [span for _service, span in receiver.spans
                  if any(a.key == "thumbs.task_id" and a.value.string_value == task_id for a in span.attributes)]
        trace_ids = {span.trace_id for span in tasked}
        by_service: dict[str, list] = {}
        for service, span in receiver.spans:
            if span.trace_id in trace_ids:
                by_service.setdefault(service, []).append(span)
        return by_service

    def exported() -> bool:
        # Each process exports on its own schedule: wait for all six spans, not merely for each service.
        by_service = spans_of_task()
        return (bool(by_service.get("thumbs-api")) and bool(by_service.get("thumbs-fetcher"))
                and bool(by_service.get("thumbs-resizer")) and len(by_service.get("thumbs-projector", [])) >= 3)

    wait_for(exported, 30, lambda: f"spans of the task by service: "
             f"{ {name: len(spans) for name, spans in spans_of_task().items()} }")
    by_service = spans_of_task()
    assert len({span.trace_id for spans in by_service.values() for span in spans}) == 1, "the task's spans share one trace"
    (request,) = [s for s in by_service["thumbs-api"] if s.name == "POST /thumbnail"]
    (fetch,) = by_service["thumbs-fetcher"]
    (resize,) = by_service["thumbs-resizer"]
    assert fetch.parent_span_id == request.span_id  # the request published the event the fetcher consumed
    assert resize.parent_span_id == fetch.span_id
    # The projector reads requested, hashed and completed: one span each, each the child of its producer.
    projected = {s.parent_span_id for s in by_service["thumbs-projector"]}
    assert {request.span_id, fetch.span_id, resize.span_id} <= projected
    outcomes = {a.value.string_value for s in (fetch, resize) for a in s.attributes if a.key == "thumbs.outcome"}
    assert outcomes == {"thumbnail.fetched,thumbnail.hashed", "thumbnail.completed"}


def test_probes_answer_and_a_stopped_stage_stops_answering(stack: Stack) -> None:
    for stage in ("api", *STAGES):
        assert _probe(stack, stage, "/livez") == 200, stage
        assert _probe(stack, stage, "/readyz") == 200, stage
    body = httpx.get(f"http://127.0.0.1:{_metrics_port(stack, 'fetcher')}/readyz", timeout=2).json()
    assert body == {"status": "ok", "reason": "assigned, dependencies reachable"}, body

    fetcher = stack.processes["fetcher"]
    os.kill(fetcher.pid, signal.SIGSTOP)  # a hung process: neither its loop nor its probe thread runs
    try:
        assert _probe(stack, "fetcher", "/livez", timeout=1.0) is None
        assert _probe(stack, "resizer", "/livez") == 200  # the others carry on
    finally:
        os.kill(fetcher.pid, signal.SIGCONT)
    wait_for(lambda: _probe(stack, "fetcher", "/livez") == 200, 30, lambda: stack.log_tail("fetcher"))


def test_every_metric_of_the_dashboard_and_the_alerts_is_served(stack: Stack, images: ImageServer) -> None:
    # A success and a failure first, so that the labelled series (failures by code, downloads, task latency) exist.
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        for url in (images.add("/metered.jpg", _jpeg()), images.add("/missing.jpg", b"gone", status=404)):
            poll_terminal(client, client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"])

    def scraped(stage: str) -> set[str]:
        text = httpx.get(f"http://127.0.0.1:{_metrics_port(stack, stage)}/metrics", timeout=5).text
        return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}

    # librdkafka's statistics arrive every 5 s; each stage then reports the lag of the partitions it holds.
    wait_for(lambda: all("thumbs_consumer_lag" in scraped(stage) for stage in STAGES), 20,
             lambda: "no thumbs_consumer_lag series")
    served = set().union(*(scraped(stage) for stage in ("api", *STAGES)))
    assert metric_names_used() - served == set()


def test_logs_are_json_lines_naming_the_task(stack: Stack, images: ImageServer) -> None:
    url = images.add("/absent.jpg", b"gone", status=404)
    with httpx.Client(base_url=stack.api, timeout=10) as client:
        task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
        assert poll_terminal(client, task_id)["status"] == "FAILURE"

    def failure_lines() -> list[dict]:
        return [line for line in _log_lines(stack, "fetcher") if line.get("task_id") == task_id]

    wait_for(lambda: bool(failure_lines()), 10, lambda: stack.log_tail("fetcher"))
    (line,) = failure_lines()
    assert line["process"] == "fetcher" and line["stage"] == "fetcher" and line["level"] == "WARNING"
    assert line["error_code"] == "SOURCE_HTTP_ERROR" and line["event_type"] == "thumbnail.requested"
    assert line["topic"] == stack.settings.topic("thumbnail.requested")
    assert isinstance(line["partition"], int) and isinstance(line["offset"], int) and line["correlation_id"]

    access = [line for line in _log_lines(stack, "api") if line.get("logger") == "thumbs.access"]
    posted = [line for line in access if line.get("task_id") == task_id and line["method"] == "POST"]
    assert posted and posted[0]["status"] == 202 and posted[0]["path"] == "/thumbnail", access[-5:]
    assert not [line for line in access if line["path"] in ("/health", "/ready", "/livez", "/readyz", "/metrics")]


def test_the_stack_logs_no_traceback(stack: Stack) -> None:
    for name in ("api", *STAGES):
        log = Path(stack.settings.state_dir / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{name}:\n{stack.log_tail(name)}"
