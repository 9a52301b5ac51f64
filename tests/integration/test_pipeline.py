"""End to end through real processes, a real Kafka broker and a real Cassandra node."""
from __future__ import annotations

import base64
import http.server
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from httpx_sse import EventSource, connect_sse
from PIL import Image, ImageDraw, ImageFilter

from .stack import REPO, ImageServer, Stack, free_port, poll_terminal, running_stack, wait_for

pytestmark = pytest.mark.integration


def photo(width: int, height: int, seed: int) -> bytes:
    """A small photo-like JPEG: shapes, blur and grain, distinct per seed."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        box = sorted(rng.randrange(width) for _ in range(2)), sorted(rng.randrange(height) for _ in range(2))
        draw.ellipse((box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.randrange(256) for _ in range(3)))
    image = image.filter(ImageFilter.GaussianBlur(3))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("stack")) as stack:
        yield stack


def test_post_poll_success_file_and_etag(client: httpx.Client, images: ImageServer) -> None:
    url = images.add("/e2e/photo.jpg", photo(640, 480, seed=1))
    response = client.post("/thumbnail", json={"source_image_url": url})
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    body = poll_terminal(client, task_id, timeout=120)
    assert body["status"] == "SUCCESS", body
    data = base64.b64decode(body["base64_thumbnail_data"])
    thumbnail = Image.open(io.BytesIO(data))
    assert thumbnail.format == "JPEG" and thumbnail.size == (100, 75)  # 640x480 keeps 4:3 within 100x100
    assert (body["width"], body["height"], body["content_type"]) == (100, 75, "image/jpeg")
    served = client.get("/thumbnail/file", params={"task_id": task_id})
    assert served.status_code == 200 and served.content == data
    assert served.headers["content-type"] == "image/jpeg"
    cached = client.get("/thumbnail/file", params={"task_id": task_id}, headers={"If-None-Match": served.headers["etag"]})
    assert cached.status_code == 304


@pytest.mark.parametrize("fmt", ["png", "avif"])
def test_rendition_from_the_post_body(client: httpx.Client, images: ImageServer, fmt: str) -> None:
    url = images.add(f"/e2e/wide-{fmt}.jpg", photo(800, 200, seed=2))
    task_id = client.post("/thumbnail", json={"source_image_url": url, "width": 200, "height": 200, "format": fmt}).json()["task_id"]
    body = poll_terminal(client, task_id)
    assert body["status"] == "SUCCESS" and body["content_type"] == f"image/{fmt}", body
    image = Image.open(io.BytesIO(base64.b64decode(body["base64_thumbnail_data"])))
    assert image.format == fmt.upper() and image.size == (200, 50)
    served = client.get("/thumbnail/file", params={"task_id": task_id})
    assert served.headers["content-type"] == f"image/{fmt}"


def test_same_content_under_50_urls_is_resized_once(client: httpx.Client, images: ImageServer, stack: Stack) -> None:
    data = photo(400, 300, seed=3)
    resizes_before = stack.metric("resizer", "thumbs_resizes_total")
    def hits() -> float:  # known content is answered by the fetcher, or by the resizer under its lock
        return stack.metric("fetcher", "thumbs_dedupe_hits_total") + stack.metric("resizer", "thumbs_dedupe_hits_total")

    hits_before = hits()
    task_ids = [
        client.post("/thumbnail", json={"source_image_url": images.add(f"/dedupe/{n}.jpg", data)}).json()["task_id"]
        for n in range(50)
    ]
    results = [poll_terminal(client, task_id) for task_id in task_ids]
    assert [r["status"] for r in results] == ["SUCCESS"] * 50
    assert len({r["base64_thumbnail_data"] for r in results}) == 1
    assert stack.metric("resizer", "thumbs_resizes_total") - resizes_before == 1
    assert hits() - hits_before == 49


def test_get_right_after_post_never_answers_404(client: httpx.Client, images: ImageServer) -> None:
    url = images.add("/ryw/a.jpg", photo(120, 90, seed=4))
    for _ in range(200):
        task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
        response = client.get("/thumbnail", params={"task_id": task_id})
        assert response.status_code in (200, 202), response.text


def test_a_retried_post_with_an_idempotency_key_is_one_task(client: httpx.Client, images: ImageServer) -> None:
    url = images.add("/e2e/once.jpg", photo(320, 240, seed=7))
    headers = {"Idempotency-Key": f"retry-{url}"}
    first = client.post("/thumbnail", json={"source_image_url": url}, headers=headers)
    again = client.post("/thumbnail", json={"source_image_url": url}, headers=headers)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    task_id = first.json()["task_id"]
    assert again.json()["task_id"] == task_id and again.headers["idempotent-replayed"] == "true"
    assert poll_terminal(client, task_id)["status"] == "SUCCESS"
    after = client.post("/thumbnail", json={"source_image_url": url}, headers=headers)  # also once it is done
    assert after.json()["task_id"] == task_id
    assert images.hits["/e2e/once.jpg"] == 1  # one task, so one fetch
    other = client.post("/thumbnail", json={"source_image_url": url, "width": 50}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_origin_404_ends_in_failure_with_code(client: httpx.Client, images: ImageServer) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": images.base + "/missing.jpg"}).json()["task_id"]
    body = poll_terminal(client, task_id)
    assert body["status"] == "FAILURE" and body["error"]["code"] == "SOURCE_HTTP_ERROR", body
    failed_file = client.get("/thumbnail/file", params={"task_id": task_id})
    assert failed_file.status_code == 422 and failed_file.json()["error"]["code"] == "SOURCE_HTTP_ERROR"


def test_loopback_outside_the_allow_list_is_refused(client: httpx.Client, images: ImageServer) -> None:
    images.add("/ssrf/ok.jpg", photo(50, 50, seed=5))
    port = images.base.rsplit(":", 1)[1]
    task_id = client.post("/thumbnail", json={"source_image_url": f"http://127.0.0.1:{port}/ssrf/ok.jpg"}).json()["task_id"]
    body = poll_terminal(client, task_id)
    assert body["status"] == "FAILURE" and body["error"]["code"] == "SOURCE_FORBIDDEN_ADDRESS", body


def test_every_stage_serves_metrics(stack: Stack) -> None:
    assert stack.metric("fetcher", "thumbs_events_in_total") > 0
    assert stack.metric("projector", "thumbs_events_in_total") > 0
    assert stack.metric("api", "thumbs_http_requests_total") > 0


def _dead_letters(stack: Stack, expected: set[tuple[str, str]], timeout: float = 60.0) -> dict[tuple[str, str], dict]:
    import json
    import time
    import uuid

    from confluent_kafka import Consumer

    consumer = Consumer({
        "bootstrap.servers": stack.settings.kafka_bootstrap, "group.id": f"dlq-check-{uuid.uuid4()}",
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([stack.settings.topic("thumbnail.dlq")])
    found: dict[tuple[str, str], dict] = {}
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not expected <= set(found):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            record = json.loads(message.value())
            found[(record["stage"], record["source_topic"])] = record
    finally:
        consumer.close()
    return found


def test_poison_records_go_to_the_dead_letter_topic_and_stages_keep_serving(
    client: httpx.Client, images: ImageServer, stack: Stack
) -> None:
    import asyncio

    from services.common.kafka import KafkaPublisher

    settings = stack.settings
    publisher = KafkaPublisher(settings)
    poison = {
        "thumbnail.requested": b"this is not json",
        "thumbnail.requested.retry": b'{"type": "thumbnail.requested", "version": 99}',
        "thumbnail.fetched": b'{"type": "thumbnail.fetched", "version": 1, "payload": {}}',
        "thumbnail.hashed": b'{"type": "thumbnail.hashed", "version": 1, "payload": {"image_size": 0}}',
        "thumbnail.completed": b"\xff\xfe\x00" * (7 * 1024 * 1024),  # 21 MiB: too large to keep in its letter
        "thumbnail.failed": b"[]",
    }

    async def produce() -> None:
        for topic, value in poison.items():
            await publisher.publish(settings.topic(topic), b"poison", value, [("origin", b"test")])

    asyncio.run(produce())
    publisher.close()
    expected = {
        ("fetcher", settings.topic("thumbnail.requested")), ("projector", settings.topic("thumbnail.requested")),
        ("fetcher", settings.topic("thumbnail.requested.retry")), ("resizer", settings.topic("thumbnail.fetched")),
        ("projector", settings.topic("thumbnail.hashed")), ("projector", settings.topic("thumbnail.completed")),
        ("projector", settings.topic("thumbnail.failed")),
    }
    found = _dead_letters(stack, expected)
    assert expected <= set(found), sorted(found)
    record = found[("fetcher", settings.topic("thumbnail.requested"))]
    assert base64.b64decode(record["original_value_base64"]) == b"this is not json"
    assert record["original_headers"] == [["origin", base64.b64encode(b"test").decode()]]
    assert "not JSON" in record["reason"] and record["offset"] >= 0
    huge = found[("projector", settings.topic("thumbnail.completed"))]
    assert huge["original_value_base64"] == "" and huge["original_value_omitted"]["size"] == 21 * 1024 * 1024
    # and the stages still serve
    url = images.add("/after-poison.jpg", photo(300, 200, seed=6))
    task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
    assert poll_terminal(client, task_id)["status"] == "SUCCESS"
    assert stack.metric("fetcher", "thumbs_dead_letters_total") >= 2


def test_requests_produced_straight_to_kafka(client: httpx.Client, images: ImageServer, stack: Stack) -> None:
    """An external producer: minimal event, unknown extra fields, and the same event sent twice."""
    import asyncio
    import json
    import uuid

    from services.common.kafka import KafkaPublisher

    url = images.add("/external.jpg", photo(300, 150, seed=7))
    minimal_id, extra_id, twice_id = (str(uuid.uuid4()) for _ in range(3))

    def event(task_id: str, **extra: object) -> bytes:
        body = {"event_id": str(uuid.uuid4()), "type": "thumbnail.requested", "version": 1, "task_id": task_id,
                "payload": {"source_url": url}, **extra}
        return json.dumps(body).encode()

    with_extras = event(extra_id, producer="system-b", shiny=True)
    with_extras = with_extras.replace(b'"payload": {', b'"payload": {"priority": "high", ')
    twice = event(twice_id)
    publisher = KafkaPublisher(stack.settings)

    async def produce() -> None:
        topic = stack.settings.topic("thumbnail.requested")
        for task_id, value in ((minimal_id, event(minimal_id)), (extra_id, with_extras), (twice_id, twice), (twice_id, twice)):
            await publisher.publish(topic, task_id.encode(), value)

    asyncio.run(produce())
    publisher.close()
    for task_id in (minimal_id, extra_id, twice_id):
        body = poll_terminal(client, task_id, produced_to_kafka=True)
        assert body["status"] == "SUCCESS", body
        assert (body["width"], body["height"]) == (100, 50)


def _sse(source: EventSource) -> Iterator[tuple[str, int, dict]]:
    assert source.response.status_code == 200, source.response.read()
    for sse in source.iter_sse():
        yield sse.event, int(sse.id), json.loads(sse.data)


def _gated(body: bytes, gate: threading.Event) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    """An origin that answers only once the test opens the gate, so the task is seen PENDING first."""

    def serve(handler: http.server.BaseHTTPRequestHandler) -> None:
        gate.wait(10)
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return serve


def test_events_stream_a_task_from_post_to_success(client: httpx.Client, images: ImageServer) -> None:
    gate = threading.Event()
    url = images.behave("/events/gated.jpg", _gated(photo(400, 200, seed=11), gate))
    task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
    with connect_sse(client, "GET", "/thumbnail/events", params={"task_id": task_id},
                     timeout=httpx.Timeout(10, read=30)) as source:  # 30 s: over the 15 s between pings
        events = _sse(source)
        seen = [next(events)]
        gate.set()
        seen.extend(events)
    assert [seq for _, seq, _ in seen] == list(range(1, len(seen) + 1)) and {kind for kind, _, _ in seen} == {"status"}
    steps = [(body["status"], body.get("stage")) for _, _, body in seen]
    assert steps[0] == ("PENDING", "PENDING") and steps[-1] == ("SUCCESS", None), steps
    assert steps in ([("PENDING", "PENDING"), ("SUCCESS", None)],  # FETCHED may pass between two looks
                     [("PENDING", "PENDING"), ("PENDING", "FETCHED"), ("SUCCESS", None)]), steps
    last = seen[-1][2]
    assert (last["width"], last["height"], last["content_type"]) == (100, 50, "image/jpeg")
    assert "base64_thumbnail_data" not in last and last["task_id"] == task_id


def test_events_of_a_failing_source_end_in_failure_with_its_code(client: httpx.Client, images: ImageServer) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": images.base + "/events/missing.jpg"}).json()["task_id"]
    with connect_sse(client, "GET", "/thumbnail/events", params={"task_id": task_id},
                     timeout=httpx.Timeout(10, read=30)) as source:
        seen = list(_sse(source))
    assert seen[-1][2]["status"] == "FAILURE" and seen[-1][2]["error"]["code"] == "SOURCE_HTTP_ERROR", seen
    assert all(body["status"] == "PENDING" for _, _, body in seen[:-1]), seen


def test_events_of_a_finished_task_are_its_terminal_event_at_once(client: httpx.Client, images: ImageServer) -> None:
    task_id = client.post("/thumbnail", json={"source_image_url": images.add("/events/done.jpg", photo(64, 64, seed=12))}).json()["task_id"]
    assert poll_terminal(client, task_id)["status"] == "SUCCESS"
    started = time.monotonic()
    with connect_sse(client, "GET", "/thumbnail/events", params={"task_id": task_id}) as source:
        seen = list(_sse(source))
    assert time.monotonic() - started < 2.0
    assert [(kind, seq, body["status"]) for kind, seq, body in seen] == [("status", 1, "SUCCESS")]
    unknown = client.get("/thumbnail/events", params={"task_id": "00000000-0000-4000-8000-000000000000"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "TASK_NOT_FOUND"


def test_post_with_wait_answers_the_thumbnail_in_the_same_call(client: httpx.Client, images: ImageServer) -> None:
    url = images.add("/wait/done.jpg", photo(400, 200, seed=13))
    answer = client.post("/thumbnail", params={"wait": "20"}, json={"source_image_url": url}, timeout=30)
    body = answer.json()
    assert answer.status_code == 200 and body["status"] == "SUCCESS", body
    assert (body["width"], body["height"]) == (100, 50) and base64.b64decode(body["base64_thumbnail_data"])[:2] == b"\xff\xd8"
    failing = client.post("/thumbnail", params={"wait": "20"}, json={"source_image_url": images.base + "/wait/missing.jpg"}, timeout=30)
    assert failing.status_code == 200 and failing.json()["error"]["code"] == "SOURCE_HTTP_ERROR", failing.text


def test_get_with_wait_wakes_at_the_outcome_or_answers_pending_at_the_end(client: httpx.Client, images: ImageServer) -> None:
    gate = threading.Event()
    url = images.behave("/wait/gated.jpg", _gated(photo(400, 200, seed=14), gate))
    task_id = client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"]
    started = time.monotonic()
    pending = client.get("/thumbnail", params={"task_id": task_id, "wait": "1"})
    assert pending.status_code == 202 and pending.json()["status"] == "PENDING" and time.monotonic() - started >= 1.0
    threading.Timer(0.5, gate.set).start()
    done = client.get("/thumbnail", params={"task_id": task_id, "wait": "20"}, timeout=30)
    assert done.status_code == 200 and done.json()["status"] == "SUCCESS", done.text


THREE_RENDITIONS = [
    {"width": 100, "height": 100},
    {"width": 200, "height": 200, "format": "webp", "fit": "cover", "gravity": "smart"},
    {"width": 64, "height": 64, "format": "avif", "fit": "pad", "background": "#204060"},
]


def test_three_renditions_come_from_one_fetch_and_dedupe_one_by_one(
    client: httpx.Client, images: ImageServer, stack: Stack,
) -> None:
    data = photo(640, 480, seed=21)
    url = images.add("/renditions/first.jpg", data)
    task_id = client.post("/thumbnail", json={"source_image_url": url, "renditions": THREE_RENDITIONS}).json()["task_id"]
    body = poll_terminal(client, task_id)
    assert body["status"] == "SUCCESS", body
    assert images.hits["/renditions/first.jpg"] == 1  # one fetch for three renditions
    made = [(r["content_type"], r["width"], r["height"], r["deduplicated"]) for r in body["renditions"]]
    # contain keeps 4:3 inside 100x100; cover and pad fill their boxes exactly
    assert made == [("image/jpeg", 100, 75, False), ("image/webp", 200, 200, False), ("image/avif", 64, 64, False)]
    assert [r["rendition"]["fit"] for r in body["renditions"]] == ["contain", "cover", "pad"]
    assert body["base64_thumbnail_data"] == body["renditions"][0]["base64_thumbnail_data"]
    for index, (content_type, width, height, _) in enumerate(made):
        decoded = Image.open(io.BytesIO(base64.b64decode(body["renditions"][index]["base64_thumbnail_data"])))
        served = client.get("/thumbnail/file", params={"task_id": task_id, "rendition": index})
        assert served.status_code == 200 and served.headers["content-type"] == content_type
        assert Image.open(io.BytesIO(served.content)).size == decoded.size == (width, height)
    band = Image.open(io.BytesIO(client.get("/thumbnail/file", params={"task_id": task_id, "rendition": 2}).content))
    assert max(abs(a - b) for a, b in zip(band.convert("RGB").getpixel((32, 1)), (0x20, 0x40, 0x60), strict=True)) <= 12
    beyond = client.get("/thumbnail/file", params={"task_id": task_id, "rendition": 3})
    assert beyond.status_code == 404 and beyond.json()["error"]["code"] == "RENDITION_NOT_FOUND"

    # The same content under another URL, asking for the same three: nothing is rendered again.
    resizes_before = stack.metric("resizer", "thumbs_resizes_total")
    again_url = images.add("/renditions/again.jpg", data)
    again_id = client.post("/thumbnail", json={"source_image_url": again_url, "renditions": THREE_RENDITIONS}).json()["task_id"]
    again = poll_terminal(client, again_id)
    assert [r["deduplicated"] for r in again["renditions"]] == [True, True, True], again
    assert [r["base64_thumbnail_data"] for r in again["renditions"]] == [r["base64_thumbnail_data"] for r in body["renditions"]]
    assert stack.metric("resizer", "thumbs_resizes_total") == resizes_before


@pytest.mark.parametrize("accept,served", [
    ("image/avif,image/webp,image/apng,image/*,*/*;q=0.8", "image/avif"),
    ("image/webp,*/*;q=0.8", "image/webp"),
    ("*/*", "image/jpeg"),
])
def test_an_auto_rendition_is_served_in_the_format_the_client_accepts(
    client: httpx.Client, images: ImageServer, accept: str, served: str,
) -> None:
    url = images.add("/renditions/auto.jpg", photo(300, 200, seed=22))
    task_id = client.post("/thumbnail", params={"wait": "20"}, timeout=30,
                          json={"source_image_url": url, "width": 120, "height": 80, "format": "auto"}).json()["task_id"]
    assert poll_terminal(client, task_id)["renditions"][0]["formats"] == ["avif", "webp", "jpeg"]
    response = client.get("/thumbnail/file", params={"task_id": task_id}, headers={"Accept": accept})
    assert response.status_code == 200 and response.headers["content-type"] == served
    assert response.headers["vary"] == "Accept" and response.headers["etag"].endswith(f'.{served[6:]}.q85.r1"')
    assert Image.open(io.BytesIO(response.content)).size == (120, 80)


def test_a_heic_source_is_decoded(client: httpx.Client, images: ImageServer) -> None:
    import pillow_heif

    source = Image.open(io.BytesIO(photo(320, 160, seed=23)))
    heic = pillow_heif.from_pillow(source)
    out = io.BytesIO()
    heic.save(out, quality=80)
    url = images.add("/renditions/photo.heic", out.getvalue(), content_type="image/heic")
    body = poll_terminal(client, client.post("/thumbnail", json={"source_image_url": url}).json()["task_id"])
    assert body["status"] == "SUCCESS" and (body["width"], body["height"]) == (100, 50), body


@pytest.fixture(scope="module")
def two_worker_api(stack: Stack) -> Iterator[tuple[str, int]]:
    """The API as THUMBS_API_WORKERS=2 runs it: two processes on one port; yields its URL and the parent's pid."""
    port = free_port()
    log = open(stack.settings.state_dir / "api-workers.log", "ab")  # kept open for the process's life
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "api"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **stack.env, "THUMBS_API_PORT": str(port), "THUMBS_API_WORKERS": "2",
                                    "THUMBS_LOG_NAME": "api-workers"})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers_ready(base), 60, lambda: "API workers not ready")
        yield base, process.pid
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def _answers_ready(base: str) -> bool:
    try:
        return httpx.get(base + "/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _children(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


def test_several_api_workers_serve_one_port_and_sum_their_metrics(
    two_worker_api: tuple[str, int], images: ImageServer,
) -> None:
    base, parent = two_worker_api
    workers = [pid for pid in _children(parent) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, workers
    url = images.add("/workers/photo.jpg", photo(300, 200, seed=24))
    # A fresh connection per request, so the kernel spreads them over both workers' accept queues.
    task_ids = [httpx.post(base + "/thumbnail", json={"source_image_url": url}).json()["task_id"] for _ in range(40)]
    with httpx.Client(base_url=base, timeout=10) as client:
        assert {poll_terminal(client, task_id)["status"] for task_id in task_ids} == {"SUCCESS"}
    text = httpx.get(base + "/metrics").text
    posts = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("thumbs_http_requests_total{") and 'route="/thumbnail"' in line and 'method="POST"' in line)
    assert posts == 40, text[:2000]  # whichever worker answered /metrics counts the other's requests too
