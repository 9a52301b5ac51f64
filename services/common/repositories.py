"""Cassandra repositories for tasks and thumbnails, each statement prepared once."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime

from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from .cassandra import execute
from .model import TASK_COLUMNS, StoredThumbnail, TaskUpdate, TaskView
from .status import Status


class TaskRepository:
    def __init__(self, session: Session, keyspace: str, ttl_seconds: int = 0) -> None:
        self._session = session
        self._keyspace = keyspace
        self._ttl = ttl_seconds
        self._updates: dict[tuple[str, ...], PreparedStatement] = {}
        self._ping = session.prepare("SELECT release_version FROM system.local")
        self._get = session.prepare(
            f"SELECT task_id, status, source_url, source_sha256, rendition_key, content_type, width, height, "
            f"error_code, error_message FROM {keyspace}.tasks WHERE task_id = ?"
        )

    async def apply(self, update: TaskUpdate) -> None:
        names = tuple(sorted(update.columns))
        unknown = set(names) - set(TASK_COLUMNS)
        if unknown:
            raise ValueError(f"unknown task columns: {sorted(unknown)}")
        statement = self._updates.get(names)
        if statement is None:
            assignments = ", ".join(["status = ?", "updated_at = ?", *(f"{n} = ?" for n in names)])
            statement = self._session.prepare(
                f"UPDATE {self._keyspace}.tasks USING TTL ? AND TIMESTAMP ? SET {assignments} WHERE task_id = ?"
            )
            self._updates[names] = statement
        updated_at = datetime.fromtimestamp(update.occurred_at_micros / 1e6, UTC)
        values = [update.columns[n] for n in names]
        params = [self._ttl, update.timestamp, update.status.value, updated_at, *values, uuid.UUID(update.task_id)]
        await execute(self._session, statement, params, operation="task_write")

    async def ping(self) -> None:
        await execute(self._session, self._ping, operation="ping")

    async def get(self, task_id: str) -> TaskView | None:
        rows = await execute(self._session, self._get, [uuid.UUID(task_id)], operation="task_read")
        if not rows or rows[0].status is None:
            return None
        row = rows[0]
        return TaskView(
            task_id=str(row.task_id), status=Status(row.status), source_url=row.source_url,
            source_sha256=row.source_sha256, rendition_key=row.rendition_key, content_type=row.content_type,
            width=row.width, height=row.height, error_code=row.error_code, error_message=row.error_message,
        )


class ThumbnailRepository:
    def __init__(self, session: Session, keyspace: str) -> None:
        self._session = session
        table = f"{keyspace}.thumbnails"
        where = "WHERE source_sha256 = ? AND rendition_key = ?"
        self._data = session.prepare(f"SELECT content_type, width, height, data FROM {table} {where}")
        self._put = session.prepare(
            f"INSERT INTO {table} (source_sha256, rendition_key, data, content_type, width, height, created_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, toTimestamp(now()))"
        )

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        rows = await execute(self._session, self._data, [sha256, rendition_key], operation="thumbnail_read")
        if not rows or rows[0].data is None:
            return None
        row = rows[0]
        return StoredThumbnail(row.content_type, row.width, row.height, len(row.data), bytes(row.data))

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        params = [sha256, rendition_key, thumbnail.data, thumbnail.content_type, thumbnail.width, thumbnail.height]
        await execute(self._session, self._put, params, operation="thumbnail_write")
