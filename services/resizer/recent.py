"""The thumbnails this resizer process stored or found lately: the dedupe lookup the fetcher already made, without
asking Cassandra a second time.

Equal content is keyed to one partition of thumbnail.fetched, so while this process owns that partition, no other
process stores its thumbnails: a key the fetcher found missing and this process has not stored since is still
missing. That holds for a record fetched after this process took its partitions, and lately (so that what this
process stored since is still in its bounded memory); for anything older (a record from before a rebalance or
restart, a rewind, a backlog), and for replays and redrives (fetched long ago, checked then), Cassandra is asked as
before. Two cases may render a thumbnail twice (the same bytes, stored once): a change of the topic's partition count
moves content between partitions until the records fetched before it are handled, and a previous owner still
finishing a record more than the clock margin after giving its partition up (it waits up to 10 s, then lets go).
"""
from __future__ import annotations

from collections.abc import Mapping

from cachetools import LRUCache

from services.common.model import Event, StoredThumbnail, read_fresh
from services.common.ports import Thumbnails

CLOCK_MARGIN_S = 10.0  # fetcher and resizer hosts' clocks may disagree by this much (NTP keeps them far closer)
# Far more thumbnails than one process stores while a record is read fresh (a few hundred a second at most, for
# model.FRESH_S): ~8 MB of facts.
REMEMBERED_KEYS = 20_000


def fetcher_lookup_holds(event: Event, headers: Mapping[str, bytes], owned_since: float, now: float) -> bool:
    """Whether the fetcher's dedupe lookup for this record still stands, for a process that took its partitions
    at `owned_since` (wall clock, seconds, as `now`)."""
    return read_fresh(event, headers, now) and owned_since + CLOCK_MARGIN_S < event.occurred_at_micros / 1e6


class RecentThumbnails:
    """Thumbnails by (sha256, key), their facts only (a dedupe hit needs no bytes), least recently used out.

    `known` answers lookups from memory alone; `read_through` asks Cassandra for what memory does not hold."""

    def __init__(self, store: Thumbnails, size: int = REMEMBERED_KEYS) -> None:
        self._store = store
        self._seen: LRUCache[tuple[str, str], StoredThumbnail] = LRUCache(size)
        self.known: Thumbnails = _Known(self)
        self.read_through: Thumbnails = _ReadThrough(self)

    def recall(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        return self._seen.get((sha256, rendition_key))

    def remember(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        t = thumbnail
        self._seen[(sha256, rendition_key)] = StoredThumbnail(t.content_type, t.width, t.height, t.size_bytes)

    async def find_stored(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        found = await self._store.find(sha256, rendition_key)
        if found is not None:
            self.remember(sha256, rendition_key, found)
        return found

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        await self._store.put(sha256, rendition_key, thumbnail)
        self.remember(sha256, rendition_key, thumbnail)


class _Known:
    def __init__(self, recent: RecentThumbnails) -> None:
        self._recent = recent

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        return self._recent.recall(sha256, rendition_key)

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        await self._recent.put(sha256, rendition_key, thumbnail)


class _ReadThrough(_Known):
    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        return self._recent.recall(sha256, rendition_key) or await self._recent.find_stored(sha256, rendition_key)
