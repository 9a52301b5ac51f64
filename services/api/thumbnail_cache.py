"""Thumbnails kept in the API process: their keys name their content, so a kept one can never be stale."""
from __future__ import annotations

from cachetools import LRUCache

from services.common.metrics import API_THUMBNAIL_CACHE as LOOKUPS
from services.common.model import StoredThumbnail
from services.common.ports import Thumbnails

ENTRY_OVERHEAD = 300  # bytes of Python objects around each thumbnail's data, roughly


class CachedThumbnails:
    """A least-recently-used cache in front of the thumbnail store, bounded in bytes of thumbnail data."""

    def __init__(self, store: Thumbnails, max_bytes: int) -> None:
        self._store = store
        self._kept: LRUCache[tuple[str, str], StoredThumbnail] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda thumbnail: len(thumbnail.data) + ENTRY_OVERHEAD)
        for outcome in ("hit", "miss"):
            LOOKUPS.labels(outcome)

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        kept = self._kept.get((sha256, rendition_key))
        if kept is not None:
            LOOKUPS.labels("hit").inc()
            return kept
        LOOKUPS.labels("miss").inc()
        found = await self._store.find(sha256, rendition_key)
        if found is not None and self._kept.getsizeof(found) <= self._kept.maxsize:
            self._kept[(sha256, rendition_key)] = found
        return found

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        await self._store.put(sha256, rendition_key, thumbnail)
