"""GET /thumbnail/events: the pure core that turns task snapshots into events, and the route with in-memory ports."""
import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from httpx_sse import connect_sse
from starlette.testclient import TestClient

from services.api.app import create_app
from services.api.task_events import FIRST_POLL_SECONDS, MAX_POLL_SECONDS, StreamSlots, TaskWatch, status_body
from services.common.model import (
    Completed,
    Event,
    Failed,
    Fetched,
    Rendered,
    Rendition,
    Requested,
    TaskRendition,
    TaskUpdate,
    TaskView,
)
from services.common.settings import Settings
from services.common.status import Status
from services.projector.core import project
from tests.fakes import FakeIdempotencyKeys, FakePublisher, FakeTasks, FakeThumbnails

SHA = "34" * 32
URL = "http://127.0.0.1:8000/a.jpg"


def _view(status: Status, **columns: object) -> TaskView:
    values: dict[str, object] = dict.fromkeys(("source_url", "source_sha256", "rendition_key", "content_type", "width",
                                               "height", "error_code", "error_message"))
    return TaskView(task_id="t-1", status=status, **{**values, **columns})  # type: ignore[arg-type]


def _watch(max_seconds: float = 600.0) -> TaskWatch:
    return TaskWatch("t-1", started_at=0.0, max_seconds=max_seconds)  # undisturbed delays: jitter 0.5 by default


DONE = _view(Status.SUCCESS, source_sha256=SHA, content_type="image/jpeg", width=100, height=75, rendition_key="k",
             renditions=(TaskRendition(Rendered(Rendition(), "image/jpeg", 100, 75, 2048, False), {"jpeg": "k"}),))


def test_pending_fetched_success_is_three_events_and_the_last_ends_the_stream() -> None:
    watch = _watch()
    sent = [watch.observe(v) for v in (_view(Status.PENDING), _view(Status.FETCHED), DONE)]
    assert [(e.kind, e.sequence) for e in sent if e] == [("status", 1), ("status", 2), ("status", 3)]
    assert [e.data["status"] for e in sent if e] == ["PENDING", "PENDING", "SUCCESS"]
    assert [e.data.get("stage") for e in sent if e] == ["PENDING", "FETCHED", None]
    assert sent[2] is not None and sent[2].data == {
        "task_id": "t-1", "status": "SUCCESS", "message": "ok", "content_type": "image/jpeg", "width": 100, "height": 75,
        "source_sha256": SHA, "renditions": [{
            "rendition": {"width": 100, "height": 100, "format": "jpeg", "quality": 85, "fit": "contain",
                          "gravity": "center", "background": None, "enlarge": False},
            "content_type": "image/jpeg", "width": 100, "height": 75, "deduplicated": False}],
    }
    assert watch.finished and watch.observe(DONE) is None


def test_failure_carries_its_error_code() -> None:
    watch = _watch()
    watch.observe(_view(Status.PENDING))
    event = watch.observe(_view(Status.FAILURE, error_code="SOURCE_HTTP_ERROR", error_message="origin answered HTTP 404"))
    assert event is not None and watch.finished
    assert event.data["error"] == {"code": "SOURCE_HTTP_ERROR", "message": "origin answered HTTP 404"}
    assert event.data["message"] == "origin answered HTTP 404"


def test_a_finished_task_is_its_terminal_event_at_once() -> None:
    watch = _watch()
    event = watch.observe(DONE)
    assert event is not None and (event.kind, event.sequence, event.data["status"]) == ("status", 1, "SUCCESS")
    assert watch.finished


def test_unchanged_rows_send_nothing_and_slow_the_polls_down_until_a_change() -> None:
    watch = _watch()
    assert watch.observe(_view(Status.PENDING)) is not None
    delays = [watch.poll_seconds()]
    for _ in range(7):
        assert watch.observe(_view(Status.PENDING)) is None
        delays.append(watch.poll_seconds())
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0])
    assert delays[0] == FIRST_POLL_SECONDS and delays[-1] == MAX_POLL_SECONDS
    assert watch.observe(_view(Status.FETCHED)) is not None
    assert watch.poll_seconds() == pytest.approx(FIRST_POLL_SECONDS)  # fast again right after a change


def test_polls_are_spread_but_stay_within_half_and_one_and_a_half_times() -> None:
    low, high = (TaskWatch("t", 0.0, 60.0, jitter=lambda j=j: j) for j in (0.0, 0.999))
    assert low.poll_seconds() == pytest.approx(0.05) and high.poll_seconds() == pytest.approx(0.1499)


def test_the_lifetime_caps_the_wait_and_ends_with_the_last_status() -> None:
    watch = _watch(max_seconds=1.0)
    watch.observe(_view(Status.FETCHED))
    assert watch.next_wait(0.0) == pytest.approx(0.1)
    assert watch.next_wait(0.95) == pytest.approx(0.05)
    assert watch.next_wait(1.0) is None
    event = watch.timeout()
    assert (event.kind, event.sequence, event.data["stage"]) == ("timeout", 2, "FETCHED") and watch.finished


def test_a_row_that_vanished_ends_the_stream_with_an_error() -> None:
    watch = _watch()
    watch.observe(_view(Status.PENDING))
    event = watch.observe(None)
    assert event is not None and event.kind == "error" and watch.finished
    assert event.data["error"] == {"code": "TASK_NOT_FOUND", "message": "no task t-1"}


def test_the_event_body_is_the_status_body_without_the_thumbnail() -> None:
    assert "base64_thumbnail_data" not in status_body(DONE)
    assert status_body(_view(Status.PENDING, callback_url="https://h/")).get("webhook") == {
        "state": "pending", "attempts": 0, "last_status": None}


def test_slots_are_bounded() -> None:
    slots = StreamSlots(1)
    assert slots.take() and not slots.take()
    slots.give_back()
    assert slots.take()


# The route, with in-memory ports.


class ScriptedTasks(FakeTasks):
    """Applies the next scripted update before each read after the first: a row that changes while it is watched."""

    def __init__(self) -> None:
        super().__init__()
        self.script: list[TaskUpdate] = []
        self.reads = 0

    async def get(self, task_id: str) -> TaskView | None:
        self.reads += 1
        if self.reads > 1 and self.script:
            await self.apply(self.script.pop(0))
        return await super().get(task_id)


def _app(tasks: FakeTasks, **env: str) -> TestClient:
    settings = Settings.from_env({f"THUMBS_{name}": value for name, value in env.items()})
    return TestClient(create_app(settings, publisher=FakePublisher(), tasks=tasks, thumbnails=FakeThumbnails(),
                                 idempotency_keys=FakeIdempotencyKeys()))


@pytest.fixture
def tasks() -> ScriptedTasks:
    return ScriptedTasks()


@pytest.fixture
def client(tasks: ScriptedTasks) -> Iterator[TestClient]:
    with _app(tasks, SSE_MAX_SECONDS="5") as test_client:
        yield test_client


def _stream(client: TestClient, task_id: str) -> list[tuple[str, int, dict]]:
    with connect_sse(client, "GET", "/thumbnail/events", params={"task_id": task_id}) as source:
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        return [(sse.event, int(sse.id), json.loads(sse.data)) for sse in source.iter_sse()]


def _requested(task_id: str) -> TaskUpdate:
    return project(Event(task_id, Requested(URL, Rendition()), "api"))


def _completed(task_id: str) -> TaskUpdate:
    return project(Event(task_id, Completed(SHA, Rendition(), 1, "image/jpeg", 100, 60, 4, False), "resizer"))


async def test_a_row_changing_while_streaming_gives_the_next_events(client: TestClient, tasks: ScriptedTasks) -> None:
    task_id = str(uuid.uuid4())
    await tasks.apply(_requested(task_id))
    tasks.script = [_requested(task_id), project(Event(task_id, Fetched(URL, SHA, "image/jpeg", b""), "fetcher")),
                    _completed(task_id)]
    events = _stream(client, task_id)
    assert [(kind, seq, body["status"], body.get("stage")) for kind, seq, body in events] == [
        ("status", 1, "PENDING", "PENDING"), ("status", 2, "PENDING", "FETCHED"), ("status", 3, "SUCCESS", None)]
    assert events[-1][2]["width"] == 100 and "base64_thumbnail_data" not in events[-1][2]
    assert tasks.reads == 4  # the unchanged PENDING row was read, and sent nothing


async def test_a_finished_task_streams_its_terminal_event_at_once(client: TestClient, tasks: ScriptedTasks) -> None:
    task_id = str(uuid.uuid4())
    await tasks.apply(_requested(task_id))
    await tasks.apply(project(Event(task_id, Failed("fetcher", "SOURCE_HTTP_ERROR", "origin answered HTTP 404"), "fetcher")))
    started = time.monotonic()
    [(kind, seq, body)] = _stream(client, task_id)
    assert time.monotonic() - started < 1.0 and tasks.reads == 1
    assert (kind, seq, body["status"], body["error"]["code"]) == ("status", 1, "FAILURE", "SOURCE_HTTP_ERROR")


@pytest.mark.parametrize("query,status,code", [
    (f"?task_id={uuid.uuid4()}", 404, "TASK_NOT_FOUND"), ("?task_id=nope", 400, "INVALID_TASK_ID"), ("", 400, "INVALID_TASK_ID")])
def test_unknown_or_malformed_ids_are_json_errors(client: TestClient, query: str, status: int, code: str) -> None:
    response = client.get("/thumbnail/events" + query)
    assert response.status_code == status and response.json()["error"]["code"] == code


def test_store_down_before_the_stream_is_a_503(client: TestClient, tasks: ScriptedTasks) -> None:
    tasks.down = True
    response = client.get("/thumbnail/events", params={"task_id": str(uuid.uuid4())})
    assert response.status_code == 503 and response.json()["error"]["code"] == "UNAVAILABLE"


class BreakingTasks(FakeTasks):
    """Answers the first read, then fails as a lost connection does."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, task_id: str) -> TaskView | None:
        self.reads += 1
        if self.reads > 1:
            raise ConnectionError("store down")
        return await super().get(task_id)


async def test_store_failing_while_streaming_ends_with_an_error_event() -> None:
    tasks, task_id = BreakingTasks(), str(uuid.uuid4())
    await tasks.apply(_requested(task_id))
    with _app(tasks) as client:
        events = _stream(client, task_id)
    assert [(kind, seq) for kind, seq, _ in events] == [("status", 1), ("error", 2)]
    assert events[1][2]["error"]["code"] == "UNAVAILABLE"


async def test_a_stream_open_too_long_ends_with_a_timeout_event(tasks: ScriptedTasks) -> None:
    task_id = str(uuid.uuid4())
    await tasks.apply(_requested(task_id))
    with _app(tasks, SSE_MAX_SECONDS="0.5") as client:
        started = time.monotonic()
        events = _stream(client, task_id)
        assert 0.5 <= time.monotonic() - started < 2.0
        assert client.app.state.stream_slots.open == 0  # type: ignore[attr-defined]
    assert [(kind, seq, body["stage"]) for kind, seq, body in events] == [("status", 1, "PENDING"), ("timeout", 2, "PENDING")]


async def test_beyond_the_stream_limit_a_503_and_the_slot_is_free_again_after(tasks: ScriptedTasks) -> None:
    task_id = str(uuid.uuid4())
    await tasks.apply(_requested(task_id))
    with _app(tasks, SSE_MAX_STREAMS="1", SSE_MAX_SECONDS="1.5") as client:
        slots: StreamSlots = client.app.state.stream_slots  # type: ignore[attr-defined]
        held: list[list[tuple[str, int, dict]]] = []
        holder = threading.Thread(target=lambda: held.append(_stream(client, task_id)))
        holder.start()
        deadline = time.monotonic() + 5
        while slots.open == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = client.get("/thumbnail/events", params={"task_id": task_id})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "TOO_MANY_STREAMS"
        assert refused.headers["retry-after"] == "5"
        holder.join(10)
        assert [kind for kind, _, _ in held[0]] == ["status", "timeout"] and slots.open == 0
        await tasks.apply(_completed(task_id))
        assert [body["status"] for _, _, body in _stream(client, task_id)] == ["SUCCESS"]


async def test_a_client_that_goes_away_gives_its_slot_back(tasks: ScriptedTasks) -> None:
    task_id = str(uuid.uuid4())
    await tasks.apply(_requested(task_id))
    app = create_app(Settings(), publisher=FakePublisher(), tasks=tasks, thumbnails=FakeThumbnails(),
                     idempotency_keys=FakeIdempotencyKeys())
    gone, streaming = asyncio.Event(), asyncio.Event()

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            streaming.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/thumbnail/events", "raw_path": b"/thumbnail/events", "root_path": "",
             "query_string": f"task_id={task_id}".encode(), "headers": [], "client": ("127.0.0.1", 1), "server": ("t", 80)}
    async with app.router.lifespan_context(app):
        call = asyncio.create_task(app(scope, receive, send))
        await asyncio.wait_for(streaming.wait(), 5)
        assert app.state.stream_slots.open == 1
        gone.set()
        await asyncio.wait_for(call, 5)
        assert app.state.stream_slots.open == 0

