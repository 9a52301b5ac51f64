"""Cassandra repositories for tasks and thumbnails, each statement prepared once."""
from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from cassandra import WriteTimeout
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from .cassandra import execute
from .model import TASK_COLUMNS, IdempotencyClaim, StoredThumbnail, TaskUpdate, TaskView
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


class IdempotencyRepository:
    """Idempotency-Key claims, one partition per (scope, key), every write a lightweight transaction so that two API
    processes racing on one key agree on a single winner. Every cell of a claim carries the same expiry (the
    table's day, counted from `claimed_at`), so a claim vanishes whole."""

    LIFETIME = timedelta(seconds=86400)  # the table's default_time_to_live (migration 3)
    CLAIM_ATTEMPTS = 4

    def __init__(self, session: Session, keyspace: str) -> None:
        self._session = session
        table = f"{keyspace}.idempotency_keys"
        where = "WHERE scope = ? AND idempotency_key = ?"
        self._claim = session.prepare(
            f"INSERT INTO {table} (scope, idempotency_key, task_id, event_id, fingerprint, claimed_at, published) "
            f"VALUES (?, ?, ?, ?, ?, ?, false) IF NOT EXISTS")
        self._published = session.prepare(f"UPDATE {table} USING TTL ? SET published = true {where} IF task_id = ?")
        self._release = session.prepare(f"DELETE FROM {table} {where} IF task_id = ? AND published = false")
        self._take_over = session.prepare(
            f"UPDATE {table} USING TTL ? SET task_id = ?, event_id = ?, fingerprint = ?, claimed_at = ?, published = false "
            f"{where} IF claimed_at = ? AND published = false")

    async def claim(self, scope: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim | None:
        params = [scope, key, uuid.UUID(claim.task_id), uuid.UUID(claim.event_id), claim.fingerprint, claim.claimed_at]
        for attempt in range(1, self.CLAIM_ATTEMPTS + 1):
            try:
                (row,) = await execute(self._session, self._claim, params, operation="idempotency_claim")
                break
            except WriteTimeout:
                # Contended or slow Paxos: the claim may or may not be written. Asking again settles it, since a
                # written claim of ours comes back as the existing one, naming our task.
                if attempt == self.CLAIM_ATTEMPTS:
                    raise
                await asyncio.sleep(random.uniform(0.02, 0.1) * attempt)  # jittered, so racing processes spread out
        if row.applied or str(row.task_id) == claim.task_id:
            return None
        return IdempotencyClaim(str(row.task_id), str(row.event_id), row.fingerprint,
                                row.claimed_at.replace(tzinfo=UTC), bool(row.published))

    async def published(self, scope: str, key: str, claim: IdempotencyClaim) -> None:
        params = [self._remaining(claim.claimed_at), scope, key, uuid.UUID(claim.task_id)]
        await execute(self._session, self._published, params, operation="idempotency_publish")

    async def release(self, scope: str, key: str, claim: IdempotencyClaim) -> None:
        await execute(self._session, self._release, [scope, key, uuid.UUID(claim.task_id)], operation="idempotency_release")

    async def take_over(self, scope: str, key: str, stale: IdempotencyClaim, now: datetime) -> bool:
        params = [int(self.LIFETIME.total_seconds()), uuid.UUID(stale.task_id), uuid.UUID(stale.event_id),
                  stale.fingerprint, now, scope, key, stale.claimed_at]
        (row,) = await execute(self._session, self._take_over, params, operation="idempotency_take_over")
        return bool(row.applied)

    def _remaining(self, claimed_at: datetime) -> int:
        return max(1, int((claimed_at + self.LIFETIME - datetime.now(UTC)).total_seconds()))
