from collections.abc import Sequence

import pytest

from services.common.errors import ErrorCode, PermanentError
from services.common.model import Completed, Event, EventError, Failed, Fetched, Rendition, Requested, StoredThumbnail
from services.resizer.core import handle_fetched
from tests.fakes import FakeThumbnails

TASK = "6f1c2b7a-8d4e-4f0a-b1c3-2e5d7a9f0c11"
SHA = "cd" * 32


class Renderer:
    """Renders a box-sized thumbnail per rendition, recording what each call was asked for."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[list[Rendition]] = []
        self.error = error

    async def __call__(self, data: bytes, renditions: Sequence[Rendition]) -> list[StoredThumbnail]:
        self.calls.append(list(renditions))
        if self.error:
            raise self.error
        return [StoredThumbnail(r.content_type, r.width, r.height // 2, 3, f"{r.format}".encode()) for r in renditions]


def _fetched(rendition: Rendition | None = None, *more: Rendition) -> Event:
    fetched = Fetched("http://127.0.0.2/a.jpg", SHA, "image/jpeg", b"raw", rendition or Rendition(), more)
    return Event(TASK, fetched, "fetcher")


async def test_first_render_then_dedupe_hits() -> None:
    thumbnails, render = FakeThumbnails(), Renderer()
    outputs = [await handle_fetched(_fetched(), {}, thumbnails, render, 1) for _ in range(5)]
    payloads = [out[0].event.payload for out in outputs]
    assert all(isinstance(p, Completed) for p in payloads)
    assert [p.deduplicated for p in payloads] == [False, True, True, True, True]  # type: ignore[union-attr]
    assert len(render.calls) == 1 and thumbnails.puts == 1
    assert {(p.width, p.height, p.content_type, p.size_bytes) for p in payloads} == {(100, 50, "image/jpeg", 3)}  # type: ignore[union-attr]


async def test_renderer_version_and_rendition_are_part_of_the_key() -> None:
    thumbnails, render = FakeThumbnails(), Renderer()
    await handle_fetched(_fetched(), {}, thumbnails, render, 1)
    await handle_fetched(_fetched(), {}, thumbnails, render, 2)
    await handle_fetched(_fetched(Rendition(50, 50)), {}, thumbnails, render, 2)
    assert len(render.calls) == 3 and len(thumbnails.rows) == 3


COVER = Rendition(200, 200, "webp", fit="cover", gravity="smart")
AUTO = Rendition(64, 64, "auto", fit="pad")


async def test_every_rendition_is_rendered_in_one_call_and_stored_under_its_own_key() -> None:
    thumbnails, render = FakeThumbnails(), Renderer()
    [out] = await handle_fetched(_fetched(Rendition(), COVER, AUTO), {}, thumbnails, render, 1)
    done = out.event.payload
    assert isinstance(done, Completed)
    # One decode for five thumbnails: the AUTO rendition is stored as AVIF, WebP and JPEG.
    assert render.calls == [[Rendition(), COVER, *AUTO.encodings]]
    assert sorted(key for _sha, key in thumbnails.rows) == sorted([
        "100x100.jpeg.q85.r1", "200x200.webp.q85.r1.cover.g-smart",
        "64x64.avif.q85.r1.pad", "64x64.webp.q85.r1.pad", "64x64.jpeg.q85.r1.pad"])
    assert [(r.rendition, r.content_type, r.width, r.deduplicated) for r in done.rendered] == [
        (Rendition(), "image/jpeg", 100, False), (COVER, "image/webp", 200, False), (AUTO, "image/jpeg", 64, False)]


async def test_only_the_renditions_not_stored_yet_are_rendered() -> None:
    thumbnails, render = FakeThumbnails(), Renderer()
    await handle_fetched(_fetched(COVER), {}, thumbnails, render, 1)
    [out] = await handle_fetched(_fetched(Rendition(), COVER, COVER), {}, thumbnails, render, 1)
    done = out.event.payload
    assert isinstance(done, Completed)
    assert render.calls[1] == [Rendition()]  # the cover one is stored; asked twice, rendered at most once
    assert [r.deduplicated for r in done.rendered] == [False, True, True]
    [again] = await handle_fetched(_fetched(Rendition(), COVER), {}, thumbnails, render, 1)
    assert len(render.calls) == 2 and all(r.deduplicated for r in again.event.payload.rendered)  # type: ignore[union-attr]


async def test_image_errors_become_failed_events_and_store_nothing() -> None:
    thumbnails = FakeThumbnails()
    render = Renderer(PermanentError(ErrorCode.IMAGE_TOO_MANY_PIXELS, "too big"))
    [out] = await handle_fetched(_fetched(), {}, thumbnails, render, 1)
    assert isinstance(out.event.payload, Failed) and out.event.payload.code == "IMAGE_TOO_MANY_PIXELS"
    assert out.event.payload.stage == "resizer" and thumbnails.rows == {}


async def test_wrong_event_type_is_rejected_for_the_dead_letter_topic() -> None:
    with pytest.raises(EventError):
        await handle_fetched(Event(TASK, Requested("http://x/"), "api"), {}, FakeThumbnails(), Renderer(), 1)
