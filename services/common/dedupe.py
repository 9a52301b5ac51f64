"""The dedupe lookup by (content sha256, rendition key), shared by the fetcher and the resizer.

The fetcher asks first, so a known image never travels through Kafka again; the resizer asks
again under its per-content lock before rendering, which is what makes "one render per content" hold.
"""
from __future__ import annotations

from typing import Protocol

from .events import Completed, Rendition
from .repositories import StoredThumbnail


class Thumbnails(Protocol):
    """Rendered thumbnails by (source sha256, rendition key)."""

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None: ...

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None: ...


def completed(sha256: str, rendition: Rendition, renderer_version: int, stored: StoredThumbnail, *, deduplicated: bool) -> Completed:
    return Completed(
        source_sha256=sha256,
        rendition=rendition,
        renderer_version=renderer_version,
        content_type=stored.content_type,
        width=stored.width,
        height=stored.height,
        size_bytes=stored.size_bytes,
        deduplicated=deduplicated,
    )


async def existing(thumbnails: Thumbnails, sha256: str, rendition: Rendition, renderer_version: int) -> Completed | None:
    stored = await thumbnails.find(sha256, rendition.key(renderer_version))
    return None if stored is None else completed(sha256, rendition, renderer_version, stored, deduplicated=True)
