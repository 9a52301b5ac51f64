"""The dedupe lookup by (content sha256, rendition key), shared by the fetcher and the resizer.

The fetcher asks first, so a known image never travels through Kafka again; the resizer asks
again under its per-content lock before rendering, which is what makes "one render per content" hold.
"""
from __future__ import annotations

from .model import Completed, Rendition, StoredThumbnail
from .ports import Thumbnails


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
