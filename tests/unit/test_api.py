"""The HTTP contract, with in-memory ports (the same routes run against real servers in tests/integration)."""
import asyncio
import base64
import socket
import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY
from starlette.testclient import TestClient

from services.api.app import create_app
from services.common.model import Completed, Event, Failed, Fetched, Rendered, Rendition, StoredThumbnail
from services.common.settings import Settings
from services.projector.core import project
from services.stats.core import empty, report
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeStatsStage, FakeTasks, FakeThumbnails

SHA = "12" * 32


@pytest.fixture
def ports() -> tuple[FakePublisher, FakeTasks, FakeThumbnails]:
    return FakePublisher(), FakeTasks(), FakeThumbnails()


@pytest.fixture
def keys() -> FakeIdempotencyKeys:
    return FakeIdempotencyKeys()


@pytest.fixture
def client(ports: tuple[FakePublisher, FakeTasks, FakeThumbnails], keys: FakeIdempotencyKeys) -> TestClient:
    publisher, tasks, thumbnails = ports
    app = create_app(Settings(), publisher=publisher, tasks=tasks, thumbnails=thumbnails, idempotency_keys=keys)
    with TestClient(app) as test_client:
        yield test_client


def test_post_publishes_and_answers_202_with_location(client: TestClient, ports) -> None:
    response = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1:8000/a.jpg"})
    assert response.status_code == 202
    task_id = response.json()["task_id"]
    assert uuid.UUID(task_id) and response.headers["location"] == f"/thumbnail?task_id={task_id}"
    [event] = ports[0].events
    assert event.task_id == task_id and event.payload.rendition == Rendition()
    follow = client.get(response.headers["location"])
    assert follow.status_code == 202 and follow.json()["status"] == "PENDING"


def test_blanks_and_line_breaks_around_the_url_are_dropped(client: TestClient, ports) -> None:
    response = client.post("/thumbnail", json={"source_image_url": " http://127.0.0.1:8000/a.jpg\r\n"})
    assert response.status_code == 202
    assert ports[0].events[0].payload.source_url == "http://127.0.0.1:8000/a.jpg"


def test_post_accepts_a_rendition(client: TestClient, ports) -> None:
    body = {"source_image_url": "https://127.0.0.1/a.jpg", "width": 300, "height": 200, "format": "webp", "quality": 60}
    assert client.post("/thumbnail", json=body).status_code == 202
    assert ports[0].events[0].payload.rendition == Rendition(300, 200, "webp", 60)


def test_post_accepts_fit_options_and_a_list_of_renditions(client: TestClient, ports) -> None:
    one = {"source_image_url": "https://127.0.0.1/a.jpg", "fit": "COVER", "gravity": "smart", "background": "#FF0000FF"}
    assert client.post("/thumbnail", json=one).status_code == 202
    assert ports[0].events[0].payload.rendition == Rendition(fit="cover", gravity="smart", background="ff0000")
    listed = {"source_image_url": "https://127.0.0.1/a.jpg", "renditions": [
        {}, {"width": 200, "height": 200, "format": "webp", "fit": "cover"},
        {"width": 64, "height": 64, "format": "auto", "fit": "pad", "background": "#00000080", "enlarge": True}]}
    assert client.post("/thumbnail", json=listed).status_code == 202
    assert ports[0].events[1].payload.renditions == (
        Rendition(), Rendition(200, 200, "webp", fit="cover"), Rendition(64, 64, "auto", fit="pad", background="00000080", enlarge=True))


def test_an_error_in_a_listed_rendition_names_it(client: TestClient) -> None:
    body = {"source_image_url": "http://a/", "renditions": [{}, {"fit": "pad", "gravity": "north"}]}
    assert client.post("/thumbnail", json=body).json()["message"].startswith("renditions[1].gravity applies only with fit cover")
    conflict = client.post("/thumbnail", json={"source_image_url": "http://a/", "renditions": [{}], "format": "png", "width": 9})
    assert conflict.json()["message"] == "give either renditions or the top-level format, width, not both"


@pytest.mark.parametrize(
    "kwargs,status,code",
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "INVALID_JSON"),
        ({"content": b"source_image_url=x", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "UNSUPPORTED_MEDIA_TYPE"),
        ({"json": {}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_url": "http://a/"}}, 422, "INVALID_REQUEST"),  # the field is the old system's name
        ({"json": {"source_image_url": ""}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": 42}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": ["http://a/"]}}, 422, "INVALID_REQUEST"),
        ({"json": ["http://a/"]}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "ftp://127.0.0.1/a.jpg"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "file:///etc/passwd"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "javascript:alert(1)"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/b c.jpg"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "httP://\u001c"}}, 422, "INVALID_REQUEST"),  # a fuzzer's find
        ({"json": {"source_image_url": "http://a/\tb.jpg"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "\t\u0018http://a/" + "b" * 2038}}, 422, "INVALID_REQUEST"),  # 2,049 as sent
        ({"json": {"source_image_url": "http:///nohost"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/" + "x" * 2048}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "width": 0}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "height": 1025}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "width": 10.5}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "width": True}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "format": "gif"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "quality": 100}}, 422, "INVALID_REQUEST"),
        ({"content": b'{"source_image_url":"' + b"a" * 17000 + b'"}', "headers": {"content-type": "application/json"}}, 413, "BODY_TOO_LARGE"),
        ({"json": {"source_image_url": "http://a/", "fit": "stretch"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "gravity": "north"}}, 422, "INVALID_REQUEST"),  # without cover
        ({"json": {"source_image_url": "http://a/", "fit": "pad", "gravity": "smart"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "gravity": "up", "fit": "cover"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "background": "red"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "background": "#fff"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "background": None}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "enlarge": "yes"}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": []}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": [{}] * 9}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": {"width": 10}}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": [{}, 5]}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": [{}, {"width": 0}]}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": [{"height": 4096}]}}, 422, "INVALID_REQUEST"),
        ({"json": {"source_image_url": "http://a/", "renditions": [{}], "width": 10}}, 422, "CONFLICTING_FIELDS"),
    ],
)
def test_bad_requests_get_json_errors(client: TestClient, ports, kwargs: dict, status: int, code: str) -> None:
    response = client.post("/thumbnail", **kwargs)
    assert response.status_code == status
    body = response.json()
    assert body["error"]["code"] == code and body["message"] == body["error"]["message"]
    assert ports[0].events == []


def test_kafka_down_answers_503_with_retry_after(client: TestClient, ports) -> None:
    ports[0].down = True
    response = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "UNAVAILABLE"


@pytest.mark.parametrize("query,status", [("", 400), ("?task_id=nope", 400), (f"?task_id={uuid.uuid4()}", 404)])
def test_status_of_unknown_or_malformed_ids(client: TestClient, query: str, status: int) -> None:
    assert client.get("/thumbnail" + query).status_code == status
    assert client.get("/thumbnail/file" + query).status_code == status


async def _complete(ports, task_id: str) -> None:
    _, tasks, thumbnails = ports
    thumbnails.rows[(SHA, Rendition().key(1))] = StoredThumbnail("image/jpeg", 100, 60, 4, b"\xff\xd8ok")
    await tasks.apply(project(Event(task_id, Fetched("http://a/", SHA, "image/jpeg", b""), "fetcher")))
    await tasks.apply(project(Event(task_id, Completed(SHA, Rendition(), 1, "image/jpeg", 100, 60, 4, False), "resizer")))


async def test_success_status_file_etag_and_304(client: TestClient, ports) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    await _complete(ports, task_id)
    body = client.get(f"/thumbnail?task_id={task_id}").json()
    assert body["status"] == "SUCCESS" and body["message"] == "ok"
    assert base64.b64decode(body["base64_thumbnail_data"]) == b"\xff\xd8ok"
    assert (body["width"], body["height"], body["content_type"], body["source_sha256"]) == (100, 60, "image/jpeg", SHA)
    response = client.get(f"/thumbnail/file?task_id={task_id}")
    assert response.status_code == 200 and response.content == b"\xff\xd8ok"
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    etag = response.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    again = client.get(f"/thumbnail/file?task_id={task_id}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""


async def _complete_three(ports, task_id: str) -> tuple[Rendition, ...]:
    """A finished task of three renditions, the last in format auto."""
    _, tasks, thumbnails = ports
    renditions = (Rendition(), Rendition(200, 200, "webp", fit="cover"), Rendition(64, 64, "auto", fit="pad"))
    encodings = [*renditions[:2], *renditions[2].encodings]
    for encoding in encodings:
        thumbnails.rows[(SHA, encoding.key(1))] = StoredThumbnail(encoding.content_type, 64, 64, 4, encoding.format.encode())
    rendered = [Rendered(r, r.content_type, 64, 64, 4, i == 1) for i, r in enumerate(renditions)]
    await tasks.apply(project(Event(task_id, Completed.of(SHA, rendered, 1), "resizer")))
    return renditions


async def test_each_rendition_is_listed_and_served_by_its_index(client: TestClient, ports) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    await _complete_three(ports, task_id)
    body = client.get(f"/thumbnail?task_id={task_id}").json()
    assert base64.b64decode(body["base64_thumbnail_data"]) == b"jpeg" and body["content_type"] == "image/jpeg"
    assert [(r["rendition"]["fit"], r["content_type"], r["deduplicated"], base64.b64decode(r["base64_thumbnail_data"]))
            for r in body["renditions"]] == [
        ("contain", "image/jpeg", False, b"jpeg"), ("cover", "image/webp", True, b"webp"), ("pad", "image/jpeg", False, b"jpeg")]
    assert body["renditions"][2]["formats"] == ["avif", "webp", "jpeg"]
    second = client.get(f"/thumbnail/file?task_id={task_id}&rendition=1")
    assert (second.status_code, second.content, second.headers["content-type"]) == (200, b"webp", "image/webp")
    assert "vary" not in second.headers
    missing = client.get(f"/thumbnail/file?task_id={task_id}&rendition=3")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "RENDITION_NOT_FOUND"
    assert client.get(f"/thumbnail/file?task_id={task_id}&rendition=-1").json()["error"]["code"] == "INVALID_PARAMETER"


@pytest.mark.parametrize("accept,served", [
    ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", "avif"),  # what Chromium sends for images
    ("image/webp,*/*", "webp"),
    ("image/avif;q=0,image/webp;q=0.5", "webp"),
    ("*/*", "jpeg"),
    ("", "jpeg"),
    ("image/png, text/html;q=bad", "jpeg"),
])
async def test_an_auto_rendition_is_served_as_the_accept_header_allows(client: TestClient, ports, accept: str, served: str) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    await _complete_three(ports, task_id)
    response = client.get(f"/thumbnail/file?task_id={task_id}&rendition=2", headers={"Accept": accept})
    assert response.status_code == 200 and response.content == served.encode()
    assert response.headers["content-type"] == f"image/{served}" and response.headers["vary"] == "Accept"
    assert response.headers["etag"] == f'"{SHA}.64x64.{served}.q85.r1.pad"'  # one per encoding


async def test_failure_is_200_on_status_and_422_on_file(client: TestClient, ports) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    await ports[1].apply(project(Event(task_id, Failed("fetcher", "SOURCE_HTTP_ERROR", "origin answered HTTP 404"), "fetcher")))
    body = client.get(f"/thumbnail?task_id={task_id}").json()
    assert body["status"] == "FAILURE" and body["error"] == {"code": "SOURCE_HTTP_ERROR", "message": "origin answered HTTP 404"}
    response = client.get(f"/thumbnail/file?task_id={task_id}")
    assert response.status_code == 422 and response.json()["error"]["code"] == "SOURCE_HTTP_ERROR"


def test_in_flight_file_answers_202_with_retry_after(client: TestClient) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    response = client.get(f"/thumbnail/file?task_id={task_id}")
    assert response.status_code == 202 and response.headers["retry-after"] == "1"


def test_the_row_is_written_before_the_publish_which_says_so(client: TestClient, ports) -> None:
    publisher, tasks, _ = ports
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    assert tasks.cells[task_id] and ("thumbs-row-written", b"1") in publisher.event_headers[0]
    tasks.down = True  # the row cannot be written: the request is still accepted, and the projector writes it
    assert client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).status_code == 202
    assert "thumbs-row-written" not in dict(publisher.event_headers[1])
    tasks.down = False
    keyed = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/b.jpg"}, headers={"Idempotency-Key": "k-1"})
    assert keyed.status_code == 202  # published first: a row proves a key's task was accepted
    assert "thumbs-row-written" not in dict(publisher.event_headers[2]) and tasks.cells[keyed.json()["task_id"]]


def test_store_down_answers_503(client: TestClient, ports) -> None:
    ports[1].down = True
    assert client.get(f"/thumbnail?task_id={uuid.uuid4()}").status_code == 503


def test_health_ready_metrics_docs(client: TestClient, ports) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    ports[0].down = True
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["checks"] == {"kafka": "down", "cassandra": "ok"}
    client.get("/health")
    metrics = client.get("/metrics").text
    assert 'thumbs_http_requests_total{method="GET",route="/health",status="200"}' in metrics
    assert "swagger-ui-bundle.js" in client.get("/docs").text
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) >= {"/thumbnail", "/thumbnail/file", "/health", "/ready", "/metrics"}


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "NOT_FOUND"


def test_stats_passes_the_stats_stage_document_through(ports, keys) -> None:
    document = report({**empty(), "requested": 3, "succeeded": 2, "failed": 1, "failures_by_code": {"NOT_AN_IMAGE": 1}}, [])
    stage = FakeStatsStage(document)
    publisher, tasks, thumbnails = ports
    app = create_app(Settings(stats_url=stage.url), publisher=publisher, tasks=tasks, thumbnails=thumbnails, idempotency_keys=keys)
    try:
        with TestClient(app) as client:
            answer = client.get("/stats", params={"minutes": "15"})
            assert answer.status_code == 200 and answer.json() == document
            assert answer.headers["cache-control"] == "no-store"
            assert client.get("/stats").status_code == 200
            for bad in ("0", "61", "x", "-5"):
                refused = client.get("/stats", params={"minutes": bad})
                assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_PARAMETER"
        assert stage.queries == ["/stats?minutes=15", "/stats?minutes=60"]  # the refused ones never reached the stage
    finally:
        stage.close()


def test_stats_answers_503_when_the_stats_stage_does_not(ports, keys) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    publisher, tasks, thumbnails = ports
    app = create_app(Settings(stats_url=f"http://127.0.0.1:{port}"), publisher=publisher, tasks=tasks,
                     thumbnails=thumbnails, idempotency_keys=keys)
    with TestClient(app) as client:
        answer = client.get("/stats")
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "STATS_UNAVAILABLE"
        assert answer.headers["retry-after"] == "10"
        assert client.post("/thumbnail", json={"source_image_url": "https://example.com/a.jpg"}).status_code == 202


def _finish_after(ports, seconds: float, *, fail: bool = False) -> threading.Timer:
    """Completes (or fails) every task published so far, `seconds` from now, as the pipeline would."""
    publisher, tasks, _ = ports

    def finish() -> None:
        for event in list(publisher.events):
            if fail:
                asyncio.run(tasks.apply(project(Event(event.task_id, Failed("fetcher", "NOT_AN_IMAGE", "text/html"), "fetcher"))))
            else:
                asyncio.run(_complete(ports, event.task_id))

    timer = threading.Timer(seconds, finish)
    timer.start()
    return timer


def test_get_with_wait_answers_when_the_task_finishes(client: TestClient, ports) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    _finish_after(ports, 0.4)
    started = time.monotonic()
    answer = client.get("/thumbnail", params={"task_id": task_id, "wait": "10"})
    assert answer.status_code == 200 and answer.json()["status"] == "SUCCESS"
    assert 0.4 <= time.monotonic() - started < 5  # woken by the row, not by the end of the wait


def test_get_with_wait_answers_pending_when_the_wait_is_over(client: TestClient) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    started = time.monotonic()
    answer = client.get("/thumbnail", params={"task_id": task_id, "wait": "0.5"})
    assert answer.status_code == 202 and answer.json()["status"] == "PENDING"
    assert 0.5 <= time.monotonic() - started < 3


def test_post_with_wait_answers_the_finished_task(client: TestClient, ports) -> None:
    _finish_after(ports, 0.3)
    answer = client.post("/thumbnail", params={"wait": "10"}, json={"source_image_url": "http://127.0.0.1/a.jpg"})
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "SUCCESS" and body["base64_thumbnail_data"]
    assert answer.headers["location"] == f"/thumbnail?task_id={body['task_id']}"


def test_post_with_wait_answers_a_failure_and_202_when_too_slow(client: TestClient, ports) -> None:
    _finish_after(ports, 0.3, fail=True)
    failed = client.post("/thumbnail", params={"wait": "10"}, json={"source_image_url": "http://127.0.0.1/a.jpg"})
    assert failed.status_code == 200 and failed.json()["error"]["code"] == "NOT_AN_IMAGE"
    slow = client.post("/thumbnail", params={"wait": "0.3"}, json={"source_image_url": "http://127.0.0.1/b.jpg"})
    assert slow.status_code == 202 and set(slow.json()) == {"task_id"}


@pytest.mark.parametrize("wait", ["0", "-1", "30.5", "x", "nan", "inf", ""])
def test_a_bad_wait_is_a_400(client: TestClient, wait: str) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    for answer in (client.get("/thumbnail", params={"task_id": task_id, "wait": wait}),
                   client.post("/thumbnail", params={"wait": wait}, json={"source_image_url": "http://127.0.0.1/a.jpg"})):
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "INVALID_PARAMETER", answer.text


def test_waiting_requests_are_bounded_per_process(ports, keys) -> None:
    publisher, tasks, thumbnails = ports
    app = create_app(Settings(max_waiting=0), publisher=publisher, tasks=tasks, thumbnails=thumbnails, idempotency_keys=keys)
    with TestClient(app) as client:
        task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
        started = time.monotonic()
        answer = client.get("/thumbnail", params={"task_id": task_id, "wait": "20"})
        assert answer.status_code == 202 and time.monotonic() - started < 2  # no slot: the answer as it stands


def test_post_with_wait_still_answers_202_when_the_store_fails_while_waiting(client: TestClient, ports) -> None:
    threading.Timer(0.2, lambda: setattr(ports[1], "down", True)).start()
    answer = client.post("/thumbnail", params={"wait": "5"}, json={"source_image_url": "http://127.0.0.1/a.jpg"})
    assert answer.status_code == 202 and "task_id" in answer.json()  # accepted: a 503 now would invite a duplicate


def test_held_requests_are_counted_while_they_wait(client: TestClient, ports) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": "http://127.0.0.1/a.jpg"}).json()["task_id"]
    seen: list[float] = []

    def look() -> None:
        seen.append(REGISTRY.get_sample_value("thumbs_api_held_requests", {"kind": "wait"}) or 0.0)

    threading.Timer(0.3, look).start()
    assert client.get("/thumbnail", params={"task_id": task_id, "wait": "0.8"}).status_code == 202
    look()
    assert seen == [1.0, 0.0]
