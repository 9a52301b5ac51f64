"""Cassandra repositories for tasks, thumbnails, idempotency keys and API keys, each statement prepared once."""
from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cassandra import WriteTimeout
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from .cassandra import execute
from .model import (
    TASK_COLUMNS,
    ApiKey,
    IdempotencyClaim,
    StoredThumbnail,
    TaskUpdate,
    TaskView,
    WebhookDelivery,
    renditions_of_row,
)
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
            f"error_code, error_message, owner, callback_url, webhook_state, webhook_attempts, webhook_last_status, "
            f"rendition, renditions, size_bytes, deduplicated "
            f"FROM {keyspace}.tasks WHERE task_id = ?"
        )
        self._webhook = session.prepare(
            f"UPDATE {keyspace}.tasks USING TTL ? AND TIMESTAMP ? SET webhook_state = ?, webhook_attempts = ?, "
            f"webhook_last_status = ?, webhook_updated_at = ? WHERE task_id = ?"
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
            owner=row.owner, callback_url=row.callback_url, webhook_state=row.webhook_state,
            webhook_attempts=row.webhook_attempts, webhook_last_status=row.webhook_last_status,
            renditions=renditions_of_row(row._asdict()),
        )

    async def record_webhook(self, delivery: WebhookDelivery) -> None:
        """Records a webhook attempt in its task's row, leaving the status alone; the write timestamp keeps a late
        attempt from undoing a later one (WebhookDelivery.timestamp)."""
        updated_at = datetime.fromtimestamp(delivery.occurred_at_micros / 1e6, UTC)
        params = [self._ttl, delivery.timestamp, delivery.state, delivery.attempts, delivery.last_status, updated_at,
                  uuid.UUID(delivery.task_id)]
        await execute(self._session, self._webhook, params, operation="webhook_write")


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
    processes racing on one key agree on a single winner. A take-over rewrites every cell, so all of a claim's cells
    keep one expiry (the table's day) and it vanishes whole."""

    LIFETIME = timedelta(seconds=86400)  # the table's default_time_to_live (migration 3)
    CLAIM_ATTEMPTS = 4

    def __init__(self, session: Session, keyspace: str) -> None:
        self._session = session
        table = f"{keyspace}.idempotency_keys"
        where = "WHERE scope = ? AND idempotency_key = ?"
        self._claim = session.prepare(
            f"INSERT INTO {table} (scope, idempotency_key, task_id, event_id, fingerprint, claimed_at) "
            f"VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS")
        self._release = session.prepare(f"DELETE FROM {table} {where} IF task_id = ?")
        self._take_over = session.prepare(
            f"UPDATE {table} USING TTL ? SET task_id = ?, event_id = ?, fingerprint = ?, claimed_at = ? "
            f"{where} IF claimed_at = ?")

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
                                row.claimed_at.replace(tzinfo=UTC))

    async def release(self, scope: str, key: str, claim: IdempotencyClaim) -> None:
        await execute(self._session, self._release, [scope, key, uuid.UUID(claim.task_id)], operation="idempotency_release")

    async def take_over(self, scope: str, key: str, stale: IdempotencyClaim, now: datetime) -> bool:
        params = [int(self.LIFETIME.total_seconds()), uuid.UUID(stale.task_id), uuid.UUID(stale.event_id),
                  stale.fingerprint, now, scope, key, stale.claimed_at]
        (row,) = await execute(self._session, self._take_over, params, operation="idempotency_take_over")
        return bool(row.applied)



class ApiKeyRepository:
    """API key records by name, and each API process's request count per key and minute."""

    def __init__(self, session: Session, keyspace: str) -> None:
        self._session = session
        columns = "name, secret_sha256, requests_per_minute, webhook_secret, created_at, revoked_at"
        self._get = session.prepare(f"SELECT {columns} FROM {keyspace}.api_keys WHERE name = ?")
        self._all = session.prepare(f"SELECT {columns} FROM {keyspace}.api_keys")
        self._create = session.prepare(
            f"INSERT INTO {keyspace}.api_keys ({columns}) VALUES (?, ?, ?, ?, ?, null) IF NOT EXISTS")
        self._revoke = session.prepare(f"UPDATE {keyspace}.api_keys SET revoked_at = ? WHERE name = ? IF EXISTS")
        self._report = session.prepare(
            f"INSERT INTO {keyspace}.api_key_usage (name, minute, process, requests) VALUES (?, ?, ?, ?)")
        self._usage = session.prepare(f"SELECT requests FROM {keyspace}.api_key_usage WHERE name = ? AND minute = ?")

    async def get(self, name: str) -> ApiKey | None:
        rows = await execute(self._session, self._get, [name], operation="key_read")
        return _api_key(rows[0]) if rows else None

    async def all(self) -> list[ApiKey]:
        return sorted((_api_key(row) for row in await execute(self._session, self._all, operation="key_list")),
                      key=lambda key: key.name)

    async def create(self, key: ApiKey) -> bool:
        """False when a key of that name exists (revoked ones included: a name is never reused)."""
        params = [key.name, key.secret_sha256, key.requests_per_minute, key.webhook_secret, key.created_at]
        (row,) = await execute(self._session, self._create, params, operation="key_create")
        return bool(row.applied)

    async def revoke(self, name: str, at: datetime) -> bool:
        (row,) = await execute(self._session, self._revoke, [at, name], operation="key_revoke")
        return bool(row.applied)

    async def report_usage(self, name: str, minute: int, process: str, requests: int) -> int:
        """Writes this process's count and returns every process's, summed."""
        await execute(self._session, self._report, [name, minute, process, requests], operation="usage_write")
        rows = await execute(self._session, self._usage, [name, minute], operation="usage_read")
        return sum(row.requests or 0 for row in rows)


def _api_key(row: Any) -> ApiKey:
    def utc(moment: datetime | None) -> datetime | None:
        return moment.replace(tzinfo=UTC) if moment is not None else None

    created = utc(row.created_at)
    assert created is not None
    return ApiKey(row.name, row.secret_sha256, row.requests_per_minute, row.webhook_secret, created, utc(row.revoked_at))
