"""Completion webhooks end to end: real processes (the notifier among them), Kafka, Cassandra, and receivers on
loopback. Only 127.0.0.2 is allowed, so a receiver on 127.0.0.1 stands for every address the guard forbids."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.server
import ipaddress
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from confluent_kafka import Producer

from services.common.cassandra import connect
from services.common.events import encode
from services.common.kafka import client_config
from services.common.model import REQUESTED, Event, Requested, WebhookDelivery
from services.common.repositories import TaskRepository
from services.common.settings import Settings
from services.notifier.core import Answer
from services.notifier.sender import WebhookSender
from services.projector.core import project

from .stack import ImageServer, Stack, poll_terminal, running_stack, wait_for
from .test_pipeline import photo

pytestmark = pytest.mark.integration

SECRET = "integration-webhook-secret"
SLOW_HOLD_S = 20.0  # the slow receiver's longest hold of a request: the notifier is killed well before


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int | None = None  # the status sent back, once the receiver got to send it


@dataclass
class Receiver:
    """A webhook receiver on a loopback address. `/fail-N/...` answers 500 to its first N requests; `/slow/...` holds
    its first request until `release` is set (at most SLOW_HOLD_S); everything else answers 200 at once."""

    host: str
    deliveries: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                delivery = Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                earlier = [d for d in receiver.deliveries if d.path == self.path]
                receiver.deliveries.append(delivery)
                status = 200
                if self.path.startswith("/fail-"):
                    status = 500 if len(earlier) < int(self.path.split("/")[1].removeprefix("fail-")) else 200
                if self.path.startswith("/slow/") and not earlier:
                    receiver.release.wait(SLOW_HOLD_S)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                    delivery.answered = status
                except OSError:  # the notifier went away while this request was held
                    pass

            def log_message(self, *_args: object) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer((self.host, 0), Handler)
        self._httpd.daemon_threads = True
        self.base = f"http://{self.host}:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver("127.0.0.2")
    yield server
    server.close()


@pytest.fixture(scope="module")
def forbidden_receiver() -> Iterator[Receiver]:
    server = Receiver("127.0.0.1")  # loopback outside the allow list: nothing may ever reach it
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, cassandra_contact: tuple[tuple[str, ...], int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Static members: a restarted notifier takes its partitions back at once instead of after the session timeout.
    with running_stack(kafka_bootstrap, cassandra_contact, tmp_path_factory.mktemp("webhooks"),
                       names=("api", "fetcher", "resizer", "projector", "notifier"), static_members=True,
                       WEBHOOK_SECRET=SECRET, WEBHOOK_MAX_ATTEMPTS="4", WEBHOOK_RETRY_BASE_SECONDS="0.2",
                       WEBHOOK_TIMEOUT_SECONDS="15") as stack:
        yield stack


def verified(delivery: Delivery) -> dict:
    """The delivery's body, after checking its signature the way a receiver does."""
    timestamp = delivery.headers["x-thumbs-timestamp"]
    expected = "v1=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + delivery.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(delivery.headers["x-thumbs-signature"], expected), delivery.headers
    assert abs(time.time() - int(timestamp)) < 300
    assert delivery.headers["content-type"] == "application/json"
    return json.loads(delivery.body)


def webhook(client: httpx.Client, task_id: str) -> dict:
    return client.get("/thumbnail", params={"task_id": task_id}).json().get("webhook", {})


def wait_settled(client: httpx.Client, task_id: str, stack: Stack, timeout: float = 30.0) -> dict:
    wait_for(lambda: webhook(client, task_id).get("state") in ("delivered", "failed"), timeout,
             lambda: f"webhook of {task_id}: {webhook(client, task_id)}\n{stack.log_tail('notifier')}")
    return webhook(client, task_id)


def submit(client: httpx.Client, source: str, callback: str) -> str:
    response = client.post("/thumbnail", json={"source_image_url": source, "callback_url": callback})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def test_each_task_gets_exactly_one_verified_delivery(stack: Stack, client: httpx.Client, images: ImageServer,
                                                      receiver: Receiver) -> None:
    sources = {"/ok/0": images.add("/hooks/0.jpg", photo(320, 240, seed=40)),
               "/ok/1": images.add("/hooks/1.jpg", photo(240, 320, seed=41)),
               "/ok/2": images.add("/hooks/missing.jpg", b"gone", status=404)}
    tasks = {path: submit(client, source, receiver.base + path) for path, source in sources.items()}
    for path, task_id in tasks.items():
        status = poll_terminal(client, task_id)["status"]
        assert wait_settled(client, task_id, stack) == {"state": "delivered", "attempts": 1, "last_status": 200}
        [delivery] = receiver.at(path)
        body = verified(delivery)
        assert (body["task_id"], body["status"]) == (task_id, status)
        if status == "SUCCESS":
            assert set(body["thumbnail"]) >= {"content_type", "width", "height", "source_sha256", "url"}
            assert [r["url"] for r in body["renditions"]] == [body["thumbnail"]["url"] + "&rendition=0"]
            assert "base64_thumbnail_data" not in delivery.body.decode() and client.get(body["thumbnail"]["url"]).status_code == 200
        else:
            assert body["error"]["code"] == "SOURCE_HTTP_ERROR"
    assert [poll_terminal(client, tasks[p])["status"] for p in sorted(tasks)] == ["SUCCESS", "SUCCESS", "FAILURE"]
    time.sleep(1.0)  # a duplicate, if any, would arrive within this
    assert {path: len(receiver.at(path)) for path in tasks} == dict.fromkeys(tasks, 1)
    assert len({receiver.at(path)[0].headers["x-thumbs-delivery"] for path in tasks}) == 3


def test_a_receiver_failing_twice_gets_the_same_delivery_three_times(stack: Stack, client: httpx.Client,
                                                                      images: ImageServer, receiver: Receiver) -> None:
    task_id = submit(client, images.add("/hooks/flaky.jpg", photo(200, 200, seed=42)), receiver.base + "/fail-2/x")
    assert wait_settled(client, task_id, stack) == {"state": "delivered", "attempts": 3, "last_status": 200}
    deliveries = receiver.at("/fail-2/x")
    assert [d.answered for d in deliveries] == [500, 500, 200]
    assert len({d.headers["x-thumbs-delivery"] for d in deliveries}) == 1
    assert {verified(d)["task_id"] for d in deliveries} == {task_id}


def test_a_forbidden_callback_is_refused_at_post_and_never_dialled(stack: Stack, client: httpx.Client, images: ImageServer,
                                                                   forbidden_receiver: Receiver) -> None:
    port = forbidden_receiver.base.rsplit(":", 1)[1]
    source = images.add("/hooks/forbidden.jpg", photo(200, 200, seed=43))
    for callback in (forbidden_receiver.base + "/hook", f"http://localhost:{port}/hook", "http://169.254.169.254/latest/meta-data/"):
        response = client.post("/thumbnail", json={"source_image_url": source, "callback_url": callback})
        assert response.status_code == 422 and response.json()["error"]["code"] == "CALLBACK_FORBIDDEN_ADDRESS", response.text
    assert forbidden_receiver.deliveries == []


def test_a_forbidden_callback_produced_straight_to_kafka_is_refused_when_dialled(
        stack: Stack, client: httpx.Client, images: ImageServer, forbidden_receiver: Receiver) -> None:
    settings = stack.settings
    source = images.add("/hooks/direct.jpg", photo(200, 200, seed=44))
    event = Event(str(uuid.uuid4()), Requested(source, callback_url=forbidden_receiver.base + "/direct"), "other-system")
    producer = Producer({**client_config(settings), "enable.idempotence": True})
    producer.produce(settings.topic(REQUESTED), encode(event).value, event.key)
    assert producer.flush(10) == 0
    wait_for(lambda: client.get("/thumbnail", params={"task_id": event.task_id}).status_code != 404, 30,
             lambda: stack.log_tail("projector"))  # no API wrote the row: the projector does, once it sees the request
    assert poll_terminal(client, event.task_id)["status"] == "SUCCESS"
    assert wait_settled(client, event.task_id, stack) == {"state": "failed", "attempts": 1, "last_status": None}
    assert forbidden_receiver.deliveries == []


def test_killing_the_notifier_mid_delivery_loses_no_delivery(stack: Stack, client: httpx.Client, images: ImageServer,
                                                             receiver: Receiver) -> None:
    task_id = submit(client, images.add("/hooks/slow.jpg", photo(200, 200, seed=45)), receiver.base + "/slow/1")
    wait_for(lambda: len(receiver.at("/slow/1")) == 1, 30, lambda: stack.log_tail("notifier"))
    stack.stop("notifier", kill=True)  # SIGKILL while the receiver holds the request: no answer, no commit
    receiver.release.set()
    stack.start("notifier")
    assert wait_settled(client, task_id, stack, timeout=45) == {"state": "delivered", "attempts": 1, "last_status": 200}
    deliveries = receiver.at("/slow/1")
    assert deliveries[0].answered is None and deliveries[-1].answered == 200
    assert len({d.headers["x-thumbs-delivery"] for d in deliveries}) == 1
    assert {verified(d)["task_id"] for d in deliveries} == {task_id}


# --- the sender alone, against receivers on loopback (no stack) -----------------------------------------------------

class StubResolver(AbstractResolver):
    """DNS as the test says it is."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ResolveResult(hostname=host, host=self.answers[host], port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass


@pytest_asyncio.fixture(scope="module")
async def hooks() -> AsyncIterator[tuple[str, list[str]]]:
    """An aiohttp receiver on 127.0.0.2: its base URL and the paths it was asked for."""
    hits: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        await request.read()
        if request.path == "/redirect":
            raise web.HTTPFound("/target")
        if request.path == "/slow":
            await asyncio.sleep(5)
        if request.path == "/big":
            return web.Response(body=b"x" * (1024 * 1024))
        return web.Response(status=int(request.query.get("status", "200")), text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.2", handler_cancellation=True)
    await server.start_server()
    yield f"http://127.0.0.2:{server.port}", hits
    await server.close()


@pytest_asyncio.fixture
async def sender() -> AsyncIterator[WebhookSender]:
    settings = Settings(fetch_allow_networks=(ipaddress.ip_network("127.0.0.2/32"),), webhook_timeout_seconds=1.0)
    webhooks = WebhookSender(settings, resolver=StubResolver({"hooks.test": "127.0.0.2", "inside.test": "10.1.2.3"}))
    yield webhooks
    await webhooks.close()


async def test_the_sender_posts_the_body_and_headers_and_reports_the_status(sender: WebhookSender, hooks: tuple[str, list[str]]) -> None:
    base, _hits = hooks
    assert (await sender.post(base + "/ok", b"{}", {"X-Thumbs-Delivery": "d"})).status == 200
    assert (await sender.post(base + "/ok?status=503", b"{}", {})) == Answer(503)
    assert (await sender.post(base + "/big", b"{}", {})).status == 200  # a long answer is cut short, not read
    port = base.rsplit(":", 1)[1]
    assert (await sender.post(f"http://hooks.test:{port}/ok", b"{}", {})).status == 200


async def test_the_sender_follows_no_redirect(sender: WebhookSender, hooks: tuple[str, list[str]]) -> None:
    base, hits = hooks
    answer = await sender.post(base + "/redirect", b"{}", {})
    assert answer.status == 302 and not answer.delivered and "/target" not in hits


async def test_the_sender_gives_up_on_a_slow_receiver_in_time(sender: WebhookSender, hooks: tuple[str, list[str]]) -> None:
    started = time.monotonic()
    answer = await sender.post(hooks[0] + "/slow", b"{}", {})
    assert answer.status is None and not answer.permanent and time.monotonic() - started < 3


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://inside.test/hook", "http://[::1]/", "http://169.254.169.254/"])
async def test_the_sender_never_dials_a_forbidden_address(url: str, sender: WebhookSender) -> None:
    answer = await sender.post(url, b"{}", {})
    assert answer.status is None and answer.permanent and "not a public address" in answer.reason


async def test_no_connection_is_worth_another_attempt_and_a_bad_url_is_not(sender: WebhookSender) -> None:
    refused = await sender.post("http://127.0.0.2:9/hook", b"{}", {})  # nothing listens on the discard port here
    assert refused.status is None and not refused.permanent
    unresolvable = await sender.post("http://nowhere.test/hook", b"{}", {})
    assert unresolvable.status is None and not unresolvable.permanent  # DNS may be fixed by the next attempt
    assert (await sender.post("ftp://hooks.test/", b"{}", {})).permanent


async def test_the_row_keeps_the_latest_and_settled_attempt_whatever_order_they_are_written_in(stack: Stack) -> None:
    session = connect(stack.settings)
    try:
        tasks = TaskRepository(session, stack.settings.keyspace)
        task_id = str(uuid.uuid4())
        await tasks.apply(project(Event(task_id, Requested("http://127.0.0.2/a.jpg", callback_url="http://127.0.0.2/h"), "api")))
        for delivery in (WebhookDelivery(task_id, "pending", 2, 503, 2), WebhookDelivery(task_id, "delivered", 3, 200, 3),
                         WebhookDelivery(task_id, "pending", 1, 500, 1), WebhookDelivery(task_id, "failed", 4, None, 4)):
            await tasks.record_webhook(delivery)  # attempt 1 late, and a racing member giving up after the delivery
        view = await tasks.get(task_id)
        assert view is not None and view.status.value == "PENDING" and view.callback_url == "http://127.0.0.2/h"
        assert (view.webhook_state, view.webhook_attempts, view.webhook_last_status) == ("delivered", 3, 200)
    finally:
        session.cluster.shutdown()
