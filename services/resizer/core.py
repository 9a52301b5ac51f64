"""Resizer core: a thumbnail.fetched event in; a completed (rendered or deduplicated) or failed event out."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from services.common.dedupe import completed, existing
from services.common.errors import ThumbsError
from services.common.model import Event, EventError, Failed, Fetched, Outgoing, Rendition, StoredThumbnail
from services.common.ports import Thumbnails

STAGE = "resizer"
Render = Callable[[bytes, Rendition], Awaitable[StoredThumbnail]]


async def handle_fetched(
    event: Event, headers: Mapping[str, bytes], thumbnails: Thumbnails, render: Render, renderer_version: int
) -> list[Outgoing]:
    payload = event.payload
    if not isinstance(payload, Fetched):
        raise EventError(f"{event.type} does not belong on the fetched topic")
    hit = await existing(thumbnails, payload.source_sha256, payload.rendition, renderer_version)
    if hit is not None:
        return [Outgoing(event.follow(hit, STAGE))]
    try:
        stored = await render(payload.image, payload.rendition)
    except ThumbsError as exc:
        return [Outgoing(event.follow(Failed(STAGE, exc.code.value, exc.message), STAGE))]
    await thumbnails.put(payload.source_sha256, payload.rendition.key(renderer_version), stored)
    rendered = completed(payload.source_sha256, payload.rendition, renderer_version, stored, deduplicated=False)
    return [Outgoing(event.follow(rendered, STAGE))]
