"""The storage ports the cores and the API depend on; Cassandra repositories implement them, fakes stand in for tests."""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

from .model import IdempotencyClaim, StoredThumbnail, TaskUpdate, TaskView


class Thumbnails(Protocol):
    """Rendered thumbnails by (source sha256, rendition key): immutable once written."""

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None: ...

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None: ...


class Tasks(Protocol):
    """Task rows, merged column by column so that a task's status only moves forward."""

    async def apply(self, update: TaskUpdate) -> None: ...

    async def get(self, task_id: str) -> TaskView | None: ...

    async def ping(self) -> None: ...


class IdempotencyKeys(Protocol):
    """Claims of Idempotency-Key values, each written once (a lightweight transaction) and kept for a day."""

    async def claim(self, scope: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim | None:
        """Records `claim` unless the key has one; returns None when recorded, else the existing claim."""

    async def release(self, scope: str, key: str, claim: IdempotencyClaim) -> None:
        """Drops a claim whose publish failed, so that a retry starts afresh."""

    async def take_over(self, scope: str, key: str, stale: IdempotencyClaim, now: datetime) -> bool:
        """Renews a stale claim for this request; False when another request renewed it first."""
