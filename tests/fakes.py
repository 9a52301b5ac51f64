"""In-memory stand-ins for the ports of the stage cores and the API (unit tests only)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.events import Event
from services.common.kafka import PublishError
from services.common.repositories import TASK_COLUMNS, StoredThumbnail, TaskUpdate, TaskView
from services.common.status import Status


class FakeTasks:
    """Keeps, like Cassandra, the value with the highest write timestamp per column."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[str, tuple[int, Any]]] = {}
        self.down = False

    async def apply(self, update: TaskUpdate) -> None:
        if self.down:
            raise ConnectionError("store down")
        row = self.cells.setdefault(update.task_id, {})
        for name, value in {"status": update.status.value, **update.columns}.items():
            current = row.get(name)
            if current is None or update.timestamp >= current[0]:
                row[name] = (update.timestamp, value)

    async def get(self, task_id: str) -> TaskView | None:
        if self.down:
            raise ConnectionError("store down")
        row = self.cells.get(task_id)
        if not row:
            return None
        value = {name: row.get(name, (0, None))[1] for name in ("status", *TASK_COLUMNS)}
        return TaskView(
            task_id=task_id, status=Status(value["status"]), source_url=value["source_url"],
            source_sha256=value["source_sha256"], rendition_key=value["rendition_key"],
            content_type=value["content_type"], width=value["width"], height=value["height"],
            error_code=value["error_code"], error_message=value["error_message"],
        )

    async def ping(self) -> None:
        if self.down:
            raise ConnectionError("store down")


class FakeThumbnails:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StoredThumbnail] = {}
        self.puts = 0

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        return self.rows.get((sha256, rendition_key))

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        self.puts += 1
        self.rows[(sha256, rendition_key)] = thumbnail


@dataclass
class FakePublisher:
    events: list[Event] = field(default_factory=list)
    down: bool = False

    async def publish_event(self, event: Event, headers: Any = None, *, topic: str | None = None) -> None:
        if self.down:
            raise PublishError("broker down")
        self.events.append(event)

    def reachable(self, timeout: float = 2.0) -> bool:
        return not self.down
