"""In-memory stand-ins for the ports of the stage cores and the API (unit tests only)."""
from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from services.common.kafka import PublishError
from services.common.model import (
    TASK_COLUMNS,
    ApiKey,
    Event,
    IdempotencyClaim,
    StoredThumbnail,
    TaskUpdate,
    TaskView,
    WebhookDelivery,
    renditions_of_row,
)
from services.common.status import Status

WEBHOOK_COLUMNS = ("webhook_state", "webhook_attempts", "webhook_last_status")


class FakeTasks:
    """Keeps, like Cassandra, the value with the highest write timestamp per column."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[str, tuple[int, Any]]] = {}
        self.webhook_writes: list[WebhookDelivery] = []
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
        if not row or "status" not in row:
            return None
        value = {name: row.get(name, (0, None))[1] for name in ("status", *TASK_COLUMNS, *WEBHOOK_COLUMNS)}
        return TaskView(
            task_id=task_id, status=Status(value["status"]), source_url=value["source_url"],
            source_sha256=value["source_sha256"], rendition_key=value["rendition_key"],
            content_type=value["content_type"], width=value["width"], height=value["height"],
            error_code=value["error_code"], error_message=value["error_message"], owner=value["owner"],
            callback_url=value["callback_url"], webhook_state=value["webhook_state"],
            webhook_attempts=value["webhook_attempts"], webhook_last_status=value["webhook_last_status"],
            renditions=renditions_of_row(value),
        )

    async def record_webhook(self, delivery: WebhookDelivery) -> None:
        if self.down:
            raise ConnectionError("store down")
        self.webhook_writes.append(delivery)
        row = self.cells.setdefault(delivery.task_id, {})
        values = {"webhook_state": delivery.state, "webhook_attempts": delivery.attempts,
                  "webhook_last_status": delivery.last_status}
        for name, value in values.items():
            current = row.get(name)
            if current is None or delivery.timestamp >= current[0]:
                row[name] = (delivery.timestamp, value)

    async def ping(self) -> None:
        if self.down:
            raise ConnectionError("store down")


class FakeThumbnails:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], StoredThumbnail] = {}
        self.finds = 0
        self.puts = 0

    async def find(self, sha256: str, rendition_key: str) -> StoredThumbnail | None:
        self.finds += 1
        return self.rows.get((sha256, rendition_key))

    async def put(self, sha256: str, rendition_key: str, thumbnail: StoredThumbnail) -> None:
        self.puts += 1
        self.rows[(sha256, rendition_key)] = thumbnail


class FakeIdempotencyKeys:
    """Claims in a dict, with the conditional writes of the Cassandra repository."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], IdempotencyClaim] = {}
        self.down = False

    async def claim(self, scope: str, key: str, claim: IdempotencyClaim) -> IdempotencyClaim | None:
        self._refuse()
        existing = self.claims.get((scope, key))
        if existing is None:
            self.claims[(scope, key)] = claim
        return existing

    async def release(self, scope: str, key: str, claim: IdempotencyClaim) -> None:
        self._refuse()
        existing = self.claims.get((scope, key))
        if existing is not None and existing.task_id == claim.task_id:
            del self.claims[(scope, key)]

    async def take_over(self, scope: str, key: str, stale: IdempotencyClaim, now: datetime) -> bool:
        self._refuse()
        existing = self.claims.get((scope, key))
        if existing is None or existing.claimed_at != stale.claimed_at:
            return False
        self.claims[(scope, key)] = replace(stale, claimed_at=now)
        return True

    def _refuse(self) -> None:
        if self.down:
            raise ConnectionError("store down")


class FakeApiKeys:
    """Key records and per-process request counts in dicts, as the Cassandra repository keeps them."""

    def __init__(self, *records: ApiKey) -> None:
        self.records = {record.name: record for record in records}
        self.usage: dict[tuple[str, int], dict[str, int]] = {}
        self.lookups = 0
        self.down = False

    async def get(self, name: str) -> ApiKey | None:
        if self.down:
            raise ConnectionError("store down")
        self.lookups += 1
        return self.records.get(name)

    async def report_usage(self, name: str, minute: int, process: str, requests: int) -> int:
        if self.down:
            raise ConnectionError("store down")
        counts = self.usage.setdefault((name, minute), {})
        counts[process] = requests
        return sum(counts.values())


@dataclass
class FakePublisher:
    events: list[Event] = field(default_factory=list)
    event_headers: list[list[tuple[str, bytes]]] = field(default_factory=list)  # per event, in order
    records: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # raw produces: dead letters
    down: bool = False
    failures: list[BaseException] = field(default_factory=list)  # raised by the next produces, in order

    async def publish(self, topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        self._refuse()
        self.records.append((topic, key, value))

    async def publish_event(self, event: Event, headers: Any = None, *, topic: str | None = None) -> None:
        self._refuse()
        self.events.append(event)
        self.event_headers.append(list(headers or ()))

    def _refuse(self) -> None:
        if self.down:
            raise PublishError("broker down")
        if self.failures:
            raise self.failures.pop(0)

    def reachable(self, timeout: float = 2.0) -> bool:
        return not self.down


class FakeMessage:
    """What the consumer edge reads of a confluent_kafka.Message."""

    def __init__(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None = None,
                 headers: list[tuple[str, bytes]] | None = None) -> None:
        self._fields = (topic, partition, offset, value, key, headers or [])

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._fields[0]

    def partition(self) -> int:
        return self._fields[1]

    def offset(self) -> int:
        return self._fields[2]

    def value(self) -> bytes | None:
        return self._fields[3]

    def key(self) -> bytes | None:
        return self._fields[4]

    def headers(self) -> list[tuple[str, bytes]]:
        return self._fields[5]

    def timestamp(self) -> tuple[int, int]:
        return (1, 0)  # (TIMESTAMP_CREATE_TIME, epoch ms)


class FakeConsumer:
    """Hands out the given messages once, then nothing; records every commit."""

    def __init__(self, messages: list[FakeMessage]) -> None:
        self.pending = list(messages)
        self.commits: list[tuple[str, int, int]] = []
        self.closed = False

    def subscribe(self, topics: list[str], **_callbacks: Any) -> None:
        self.topics = topics

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        batch, self.pending = self.pending[:num_messages], self.pending[num_messages:]
        if not batch:
            time.sleep(min(timeout, 0.01))
        return batch

    def commit(self, *, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.extend((tp.topic, tp.partition, tp.offset) for tp in offsets)

    def close(self) -> None:
        self.closed = True


class FakeStatsStage:
    """Answers GET /stats on a loopback port with a fixed document, as the stats stage would; records the queries."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        queries = self.queries = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                queries.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
