import pytest

from services.common.errors import ErrorCode, PermanentError
from services.common.model import Completed, Event, EventError, Failed, Fetched, Rendition, Requested, StoredThumbnail
from services.resizer.core import handle_fetched
from tests.fakes import FakeThumbnails

TASK = "6f1c2b7a-8d4e-4f0a-b1c3-2e5d7a9f0c11"
SHA = "cd" * 32


class Renderer:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.error = error

    async def __call__(self, data: bytes, rendition: Rendition) -> StoredThumbnail:
        self.calls += 1
        if self.error:
            raise self.error
        return StoredThumbnail("image/jpeg", 100, 50, 3, b"jpg")


def _fetched(rendition: Rendition | None = None) -> Event:
    return Event(TASK, Fetched("http://127.0.0.2/a.jpg", SHA, "image/jpeg", b"raw", rendition or Rendition()), "fetcher")


async def test_first_render_then_dedupe_hits() -> None:
    thumbnails, render = FakeThumbnails(), Renderer()
    outputs = [await handle_fetched(_fetched(), {}, thumbnails, render, 1) for _ in range(5)]
    payloads = [out[0].event.payload for out in outputs]
    assert all(isinstance(p, Completed) for p in payloads)
    assert [p.deduplicated for p in payloads] == [False, True, True, True, True]  # type: ignore[union-attr]
    assert render.calls == 1 and thumbnails.puts == 1
    assert {(p.width, p.height, p.content_type, p.size_bytes) for p in payloads} == {(100, 50, "image/jpeg", 3)}  # type: ignore[union-attr]


async def test_renderer_version_and_rendition_are_part_of_the_key() -> None:
    thumbnails, render = FakeThumbnails(), Renderer()
    await handle_fetched(_fetched(), {}, thumbnails, render, 1)
    await handle_fetched(_fetched(), {}, thumbnails, render, 2)
    await handle_fetched(_fetched(Rendition(50, 50)), {}, thumbnails, render, 2)
    assert render.calls == 3 and len(thumbnails.rows) == 3


async def test_image_errors_become_failed_events_and_store_nothing() -> None:
    thumbnails = FakeThumbnails()
    render = Renderer(PermanentError(ErrorCode.IMAGE_TOO_MANY_PIXELS, "too big"))
    [out] = await handle_fetched(_fetched(), {}, thumbnails, render, 1)
    assert isinstance(out.event.payload, Failed) and out.event.payload.code == "IMAGE_TOO_MANY_PIXELS"
    assert out.event.payload.stage == "resizer" and thumbnails.rows == {}


async def test_wrong_event_type_is_rejected_for_the_dead_letter_topic() -> None:
    with pytest.raises(EventError):
        await handle_fetched(Event(TASK, Requested("http://x/"), "api"), {}, FakeThumbnails(), Renderer(), 1)
