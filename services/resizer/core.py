"""Resizer core: a thumbnail.fetched event in; a completed (rendered or deduplicated) or failed event out."""
from __future__ import annotations

from typing import Awaitable, Callable, Mapping, Protocol

from services.common.errors import ThumbsError
from services.common.events import Completed, Event, EventError, Failed, Fetched, Outgoing, Rendition
from services.common.repositories import StoredThumbnail

STAGE = "resizer"
Render = Callable[[bytes, Rendition], Awaitable[StoredThumbnail]]


class Thumbnails(Protocol):
    """Rendered thumbnails by (source sha256, rendition key)."""

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None: ...

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None: ...


async def handle_fetched(
    event: Event, headers: Mapping[str, bytes], thumbnails: Thumbnails, render: Render, renderer_version: int
) -> list[Outgoing]:
    payload = event.payload
    if not isinstance(payload, Fetched):
        raise EventError(f"{event.type} does not belong on the fetched topic")
    key = payload.rendition.key(renderer_version)
    stored = await thumbnails.find(payload.source_sha256, key)
    deduplicated = stored is not None
    if stored is None:
        try:
            stored = await render(payload.image, payload.rendition)
        except ThumbsError as exc:
            return [Outgoing(event.follow(Failed(STAGE, exc.code.value, exc.message), STAGE))]
        await thumbnails.put(payload.source_sha256, key, stored)
    completed = Completed(
        source_sha256=payload.source_sha256,
        rendition=payload.rendition,
        renderer_version=renderer_version,
        content_type=stored.content_type,
        width=stored.width,
        height=stored.height,
        size_bytes=stored.size_bytes,
        deduplicated=deduplicated,
    )
    return [Outgoing(event.follow(completed, STAGE))]
