"""The dedupe lookup by (content sha256, rendition key), shared by the fetcher and the resizer.

The fetcher asks first, so a known image never travels through Kafka again; the resizer asks again under
its per-content lock before rendering, which is what makes "one render per content" hold. It asks its memory of
what it stored, and Cassandra only when the fetcher's answer may be stale (services/resizer/recent.py).
Each encoding of each rendition is its own thumbnail: a task's renditions dedupe one by one.
"""
from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence

from .model import Completed, Rendered, Rendition, StoredThumbnail
from .ports import Thumbnails


def encodings_of(renditions: Sequence[Rendition]) -> list[Rendition]:
    """Every thumbnail a task's renditions need, each once (two renditions may ask for the same)."""
    return list(dict.fromkeys(encoding for rendition in renditions for encoding in rendition.encodings))


async def stored(thumbnails: Thumbnails, sha256: str, encodings: Sequence[Rendition], renderer_version: int
                 ) -> dict[Rendition, StoredThumbnail]:
    """The encodings already stored, read at once."""
    found = await asyncio.gather(*(thumbnails.find(sha256, e.key(renderer_version)) for e in encodings))
    return {encoding: hit for encoding, hit in zip(encodings, found, strict=True) if hit is not None}


def completed(sha256: str, renditions: Sequence[Rendition], renderer_version: int,
              stored: Mapping[Rendition, StoredThumbnail], rendered_now: Collection[Rendition]) -> Completed:
    """The outcome of a task whose every encoding is in `stored`; those in `rendered_now` were made for it."""
    def entry(rendition: Rendition) -> Rendered:
        served = stored[rendition.served]
        fresh = any(encoding in rendered_now for encoding in rendition.encodings)
        return Rendered(rendition, served.content_type, served.width, served.height, served.size_bytes, not fresh)

    return Completed.of(sha256, [entry(r) for r in renditions], renderer_version)


async def existing(thumbnails: Thumbnails, sha256: str, renditions: Sequence[Rendition], renderer_version: int
                   ) -> Completed | None:
    """The task's outcome when every thumbnail it needs is stored already, else None."""
    encodings = encodings_of(renditions)
    hits = await stored(thumbnails, sha256, encodings, renderer_version)
    if len(hits) < len(encodings):
        return None
    return completed(sha256, renditions, renderer_version, hits, rendered_now=())
