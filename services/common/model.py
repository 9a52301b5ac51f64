"""The pipeline's domain, standard library only: topic names, events and their payloads, task and thumbnail records.

Stage cores work on these types alone; the Kafka codec (events.py) and the Cassandra repositories
translate them at the edges.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .status import Status, write_timestamp

REQUESTED = "thumbnail.requested"
FETCHED = "thumbnail.fetched"
HASHED = "thumbnail.hashed"  # the fetched event without the image: what the projector needs
COMPLETED = "thumbnail.completed"
FAILED = "thumbnail.failed"
RETRY = "thumbnail.requested.retry"  # requested events waiting for another attempt
DLQ = "thumbnail.dlq"  # records no stage could handle, with the reason
WEBHOOK_RETRY = "thumbnail.webhook.retry"  # outcome events whose completion webhook waits for another attempt
REQUESTED_AT_HEADER = "thumbs-requested-at"  # Unix ms of the request, carried to the outcome (end-to-end latency)
REPLAY_HEADER = "thumbs-replay"  # stamped by `thumbs replay` on what it re-publishes, and carried downstream
EVENT_TYPES = (REQUESTED, FETCHED, HASHED, COMPLETED, FAILED)
PIPELINE_TOPICS = (REQUESTED, RETRY, FETCHED, HASHED, COMPLETED, FAILED, WEBHOOK_RETRY, DLQ)
FORMATS = ("jpeg", "png", "webp", "avif")
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}


class EventError(ValueError):
    """Bytes that are not a valid event of a known type and version (they go to the dead-letter topic)."""


@dataclass(frozen=True)
class Rendition:
    """What to render: fit within width x height keeping the aspect ratio, encoded as `format`."""

    width: int = 100
    height: int = 100
    format: str = "jpeg"
    quality: int = 85

    def key(self, renderer_version: int) -> str:
        """Dedupe key of a rendition: every input that changes the output bytes, renderer version included."""
        return f"{self.width}x{self.height}.{self.format}.q{self.quality}.r{renderer_version}"

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


@dataclass(frozen=True)
class Requested:
    source_url: str
    rendition: Rendition = field(default_factory=Rendition)
    callback_url: str | None = None  # POSTed the task's outcome when it ends (the notifier stage)
    owner: str | None = None  # the API key that created the task, when the API requires keys


@dataclass(frozen=True)
class Fetched:
    source_url: str
    source_sha256: str
    media_type: str
    image: bytes = field(repr=False)
    rendition: Rendition = field(default_factory=Rendition)


@dataclass(frozen=True)
class Hashed:
    """The source was downloaded and hashed: a fetched event's facts without its image (for the projector)."""

    source_url: str
    source_sha256: str
    media_type: str
    image_size: int


@dataclass(frozen=True)
class Completed:
    source_sha256: str
    rendition: Rendition
    renderer_version: int
    content_type: str
    width: int
    height: int
    size_bytes: int
    deduplicated: bool


@dataclass(frozen=True)
class Failed:
    stage: str
    code: str
    message: str
    attempts: int = 1


Payload = Requested | Fetched | Hashed | Completed | Failed
_PAYLOAD_TYPES: dict[str, type] = {
    REQUESTED: Requested, FETCHED: Fetched, HASHED: Hashed, COMPLETED: Completed, FAILED: Failed,
}
_TYPE_OF = {cls: name for name, cls in _PAYLOAD_TYPES.items()}
WRITTEN_VERSIONS = {REQUESTED: 1, FETCHED: 2, HASHED: 1, COMPLETED: 1, FAILED: 1}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    """The envelope around every payload. `correlation_id` ties a task's events to the request that began it."""

    task_id: str
    payload: Payload
    producer: str
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    occurred_at: str = field(default_factory=now_iso)
    correlation_id: str = ""

    @property
    def type(self) -> str:
        return _TYPE_OF[type(self.payload)]

    @property
    def version(self) -> int:
        """The version this code writes (it reads older ones too)."""
        return WRITTEN_VERSIONS[self.type]

    @property
    def key(self) -> bytes:
        """Kafka key: content hash for fetched (equal images share a resizer partition), task id otherwise."""
        if isinstance(self.payload, Fetched):
            return self.payload.source_sha256.encode()
        return self.task_id.encode()

    @property
    def occurred_at_micros(self) -> int:
        moment = datetime.fromisoformat(self.occurred_at.replace("Z", "+00:00"))
        return int(moment.timestamp() * 1_000_000)

    def follow(self, payload: Payload, producer: str) -> Event:
        """The next event of the same task."""
        return Event(
            task_id=self.task_id,
            payload=payload,
            producer=producer,
            correlation_id=self.correlation_id or self.event_id,
        )

    def with_payload(self, payload: Payload) -> Event:
        return replace(self, payload=payload)


@dataclass(frozen=True)
class Outgoing:
    """An event a stage core wants produced; `topic` overrides the event type's own topic (retries)."""

    event: Event
    topic: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class TaskUpdate:
    """One stage's contribution to a task row; `columns` are written with the status' timestamp."""

    task_id: str
    status: Status
    occurred_at_micros: int
    columns: Mapping[str, Any] = field(default_factory=dict)

    @property
    def timestamp(self) -> int:
        return write_timestamp(self.status, self.occurred_at_micros)


WEBHOOK_PENDING, WEBHOOK_DELIVERED, WEBHOOK_FAILED = "pending", "delivered", "failed"
# Like status.py's ranks: a receiver's 2xx is the final word; giving up only beats another attempt to come.
_WEBHOOK_RANK = {WEBHOOK_PENDING: 0, WEBHOOK_FAILED: 1, WEBHOOK_DELIVERED: 2}
_WEBHOOK_RANK_SPAN = 10**16  # far above any attempt count


@dataclass(frozen=True)
class WebhookDelivery:
    """One attempt at a task's completion webhook, as its task row records it."""

    task_id: str
    state: str  # WEBHOOK_PENDING (another attempt follows), WEBHOOK_DELIVERED or WEBHOOK_FAILED
    attempts: int
    last_status: int | None  # the receiver's HTTP status; None when it gave no answer
    occurred_at_micros: int

    @property
    def timestamp(self) -> int:
        """Cassandra keeps the write with the highest timestamp per column: `rank × 10¹⁶ + attempts`, so a later
        attempt wins over an earlier one and a settled state (failed, above it delivered) over every pending one.
        A late or re-delivered attempt never moves the row back to pending, to fewer attempts, or off delivered."""
        return _WEBHOOK_RANK[self.state] * _WEBHOOK_RANK_SPAN + self.attempts


@dataclass(frozen=True)
class TaskView:
    task_id: str
    status: Status
    source_url: str | None
    source_sha256: str | None
    rendition_key: str | None
    content_type: str | None
    width: int | None
    height: int | None
    error_code: str | None
    error_message: str | None
    owner: str | None = None
    callback_url: str | None = None
    webhook_state: str | None = None  # None until the notifier records its first attempt
    webhook_attempts: int | None = None
    webhook_last_status: int | None = None


@dataclass(frozen=True)
class ApiKey:
    """An API key's stored record: never the key itself."""

    name: str
    secret_sha256: str
    requests_per_minute: int
    webhook_secret: str  # signs this key's completion webhooks; shown once, at creation
    created_at: datetime
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class IdempotencyClaim:
    """What an Idempotency-Key stands for: the task (and its requested event's id) the first request with it created,
    and that request's fingerprint."""

    task_id: str
    event_id: str
    fingerprint: str
    claimed_at: datetime


@dataclass(frozen=True)
class StoredThumbnail:
    content_type: str
    width: int
    height: int
    size_bytes: int
    data: bytes = b""


TASK_COLUMNS = (
    "source_url", "rendition", "source_sha256", "rendition_key", "content_type", "width", "height",
    "size_bytes", "deduplicated", "error_code", "error_message", "created_at", "fetched_at", "completed_at",
    "owner", "callback_url",
)


@dataclass(frozen=True)
class Record:
    """One Kafka record as consumed, detached from the client; `timestamp_ms` is its create or log-append time."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
