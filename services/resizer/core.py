"""Resizer core: a thumbnail.fetched event in; a completed (rendered or deduplicated) or failed event out.

Every rendition of the task comes from the one source: the encodings not stored yet are rendered together
(one decode), and each is stored under its own key.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence

from services.common.dedupe import completed, encodings_of, stored
from services.common.errors import ThumbsError
from services.common.model import Event, EventError, Failed, Fetched, Outgoing, Rendition, StoredThumbnail
from services.common.ports import Thumbnails

STAGE = "resizer"
Render = Callable[[bytes, Sequence[Rendition]], Awaitable[list[StoredThumbnail]]]


async def handle_fetched(
    event: Event, headers: Mapping[str, bytes], thumbnails: Thumbnails, render: Render, renderer_version: int
) -> list[Outgoing]:
    payload = event.payload
    if not isinstance(payload, Fetched):
        raise EventError(f"{event.type} does not belong on the fetched topic")
    encodings = encodings_of(payload.renditions)
    known = await stored(thumbnails, payload.source_sha256, encodings, renderer_version)
    missing = [encoding for encoding in encodings if encoding not in known]
    if missing:
        try:
            made = await render(payload.image, missing)
        except ThumbsError as exc:
            return [Outgoing(event.follow(Failed(STAGE, exc.code.value, exc.message), STAGE))]
        await asyncio.gather(*(
            thumbnails.put(payload.source_sha256, encoding.key(renderer_version), thumbnail)
            for encoding, thumbnail in zip(missing, made, strict=True)
        ))
        known.update(zip(missing, made, strict=True))
    outcome = completed(payload.source_sha256, payload.renditions, renderer_version, known, rendered_now=missing)
    return [Outgoing(event.follow(outcome, STAGE))]
