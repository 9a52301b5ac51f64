"""The storage ports the cores and the API depend on; Cassandra repositories implement them, fakes stand in for tests."""
from __future__ import annotations

from typing import Protocol

from .model import StoredThumbnail, TaskUpdate, TaskView


class Thumbnails(Protocol):
    """Rendered thumbnails by (source sha256, rendition key): immutable once written."""

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None: ...

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None: ...


class Tasks(Protocol):
    """Task rows, merged column by column so that a task's status only moves forward."""

    async def apply(self, update: TaskUpdate) -> None: ...

    async def get(self, task_id: str) -> TaskView | None: ...

    async def ping(self) -> None: ...
