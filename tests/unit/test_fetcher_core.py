import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from services.common.errors import ErrorCode, PermanentError, TransientError
from services.common.model import Completed, Event, Failed, Fetched, Hashed, Rendition, Requested, StoredThumbnail
from services.common.retry_topic import ATTEMPT_HEADER, NOT_BEFORE_HEADER, RetryPolicy
from services.fetcher.core import handle_requested
from tests.fakes import FakeThumbnails

TASK = "6f1c2b7a-8d4e-4f0a-b1c3-2e5d7a9f0c11"


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(out, "PNG")
    return out.getvalue()


@dataclass
class Download:
    data: bytes
    sha256: str


class Source:
    def __init__(self, outcome: bytes | Exception) -> None:
        self.outcome = outcome
        self.urls: list[str] = []

    async def fetch(self, url: str) -> Download:
        self.urls.append(url)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return Download(self.outcome, hashlib.sha256(self.outcome).hexdigest())


def _request(url: str = "http://127.0.0.2/a.png") -> Event:
    return Event(TASK, Requested(url, Rendition(64, 64, "png", 80)), "api")


async def test_fetched_event_carries_bytes_hash_format_and_rendition() -> None:
    data = _png()
    [out, progress] = await handle_requested(_request(), {}, Source(data), RetryPolicy(), FakeThumbnails(), 1)
    payload = out.event.payload
    assert isinstance(payload, Fetched) and out.topic is None
    assert payload.image == data and payload.source_sha256 == hashlib.sha256(data).hexdigest()
    assert payload.media_type == "image/png" and payload.rendition == Rendition(64, 64, "png", 80)
    assert out.event.task_id == TASK and out.event.key == payload.source_sha256.encode()
    # the projector's copy: the same facts without the image, keyed by task so its row updates stay in order
    assert progress.event.payload == Hashed(payload.source_url, payload.source_sha256, "image/png", len(data))
    assert progress.event.key == TASK.encode() and progress.event.correlation_id == out.event.correlation_id


async def test_html_served_as_image_fails_not_an_image() -> None:
    [out] = await handle_requested(_request(), {}, Source(b"<!doctype html><html></html>"), RetryPolicy(), FakeThumbnails(), 1)
    assert isinstance(out.event.payload, Failed) and out.event.payload.code == "NOT_AN_IMAGE"


async def test_permanent_error_fails_at_once() -> None:
    error = PermanentError(ErrorCode.SOURCE_FORBIDDEN_ADDRESS, "10.0.0.1 is private")
    [out] = await handle_requested(_request(), {}, Source(error), RetryPolicy(), FakeThumbnails(), 1)
    assert isinstance(out.event.payload, Failed)
    assert (out.event.payload.code, out.event.payload.attempts) == ("SOURCE_FORBIDDEN_ADDRESS", 1)


async def test_transient_error_goes_to_retry_topic_with_backoff() -> None:
    error = TransientError(ErrorCode.SOURCE_TIMEOUT, "too slow")
    policy = RetryPolicy(max_attempts=3, base_seconds=2.0)
    request = _request()
    [out] = await handle_requested(request, {ATTEMPT_HEADER: b"2"}, Source(error), policy, FakeThumbnails(), 1, now=lambda: 1000.0, jitter=lambda: 0.5)
    assert out.topic == "thumbnail.requested.retry" and out.event == request  # the same event, re-queued
    headers = dict(out.headers)
    assert headers[ATTEMPT_HEADER] == b"3"
    assert headers[NOT_BEFORE_HEADER] == str(int((1000.0 + 4.0) * 1000)).encode()


async def test_transient_error_fails_after_the_last_attempt() -> None:
    error = TransientError(ErrorCode.SOURCE_HTTP_ERROR, "origin answered HTTP 503")
    [out] = await handle_requested(_request(), {ATTEMPT_HEADER: b"4"}, Source(error), RetryPolicy(max_attempts=4), FakeThumbnails(), 1)
    assert isinstance(out.event.payload, Failed)
    assert out.event.payload.code == "SOURCE_HTTP_ERROR" and out.event.payload.attempts == 4
    assert "gave up after 4 attempts" in out.event.payload.message


async def test_non_http_scheme_fails_without_fetching() -> None:
    source = Source(_png())
    [out] = await handle_requested(_request("file:///etc/passwd"), {}, source, RetryPolicy(), FakeThumbnails(), 1)
    assert isinstance(out.event.payload, Failed) and out.event.payload.code == "INVALID_REQUEST"
    assert source.urls == []


def test_backoff_doubles_with_bounded_jitter() -> None:
    policy = RetryPolicy(base_seconds=1.0)
    assert [policy.delay(n, 0.5) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert policy.delay(1, 0.0) == 0.5 and policy.delay(1, 0.999) < 1.5


async def test_known_content_completes_at_the_fetcher_without_shipping_bytes() -> None:
    data = _png()
    thumbnails = FakeThumbnails()
    rendition = Rendition(64, 64, "png", 80)
    thumbnails.rows[(hashlib.sha256(data).hexdigest(), rendition.key(3))] = StoredThumbnail("image/png", 64, 48, 10, b"x" * 10)
    [out] = await handle_requested(_request(), {}, Source(data), RetryPolicy(), thumbnails, 3)
    payload = out.event.payload
    assert isinstance(payload, Completed) and payload.deduplicated and payload.renderer_version == 3
    assert (payload.width, payload.height, payload.source_sha256) == (64, 48, hashlib.sha256(data).hexdigest())
    # another renderer version is another rendition: the bytes go on to the resizer
    [again, _hashed] = await handle_requested(_request(), {}, Source(data), RetryPolicy(), thumbnails, 4)
    assert isinstance(again.event.payload, Fetched)


async def test_a_task_of_several_renditions_is_answered_here_only_when_every_one_is_stored() -> None:
    data, thumbnails = _png(), FakeThumbnails()
    sha = hashlib.sha256(data).hexdigest()
    small, auto = Rendition(64, 64, "png", 80), Rendition(32, 32, "auto", fit="cover")
    request = Event(TASK, Requested("http://127.0.0.2/a.png", small, more_renditions=(auto,)), "api")
    thumbnails.rows[(sha, small.key(1))] = StoredThumbnail("image/png", 64, 48, 10, b"x" * 10)
    for encoding in auto.encodings[:2]:  # AVIF and WebP stored, JPEG not: the source goes on, with every rendition
        thumbnails.rows[(sha, encoding.key(1))] = StoredThumbnail(encoding.content_type, 32, 32, 5, b"y" * 5)
    [fetched, _hashed] = await handle_requested(request, {}, Source(data), RetryPolicy(), thumbnails, 1)
    assert isinstance(fetched.event.payload, Fetched) and fetched.event.payload.renditions == (small, auto)
    thumbnails.rows[(sha, auto.served.key(1))] = StoredThumbnail("image/jpeg", 32, 32, 7, b"z" * 7)
    [out] = await handle_requested(request, {}, Source(data), RetryPolicy(), thumbnails, 1)
    done = out.event.payload
    assert isinstance(done, Completed)
    assert [(r.content_type, r.size_bytes, r.deduplicated) for r in done.rendered] == [
        ("image/png", 10, True), ("image/jpeg", 7, True)]
