"""The pipeline's domain, standard library only: topic names, events and their payloads, task and thumbnail records.

Stage cores work on these types alone; the Kafka codec (events.py) and the Cassandra repositories
translate them at the edges.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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
REDRIVE_HEADER = "thumbs-redriven"  # stamped by `thumbs replay redrive` on a dead letter it re-publishes
ROW_WRITTEN_HEADER = "thumbs-row-written"  # on a requested event whose task row the API wrote before publishing it
FRESH_S = 60.0  # a record read later than this after it was made is not `read_fresh`
EVENT_TYPES = (REQUESTED, FETCHED, HASHED, COMPLETED, FAILED)
PIPELINE_TOPICS = (REQUESTED, RETRY, FETCHED, HASHED, COMPLETED, FAILED, WEBHOOK_RETRY, DLQ)
FORMATS = ("jpeg", "png", "webp", "avif")  # encodings; a request may also ask for AUTO
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "avif": "image/avif"}


class EventError(ValueError):
    """Bytes that are not a valid event of a known type and version (they go to the dead-letter topic)."""


FITS = ("contain", "cover", "pad")
GRAVITIES = ("center", "north", "south", "east", "west", "smart")
ALPHA_FORMATS = ("png", "webp", "avif")
AUTO = "auto"  # a rendition in AVIF, WebP and JPEG; GET /thumbnail/file picks one by the request's Accept header
AUTO_FORMATS = ("avif", "webp", "jpeg")  # in order of preference


@dataclass(frozen=True)
class Rendition:
    """What to render from a source, and how.

    fit: `contain` fits the picture inside width x height keeping its aspect ratio; `cover` fills the box exactly,
    cropping what overflows where `gravity` says; `pad` fits inside and letterboxes it on `background` to exactly the
    box. `enlarge` lets a source smaller than the box be scaled up. `background` ("rrggbb" or "rrggbbaa", lowercase)
    is the colour behind transparent parts and padding; unset, they stay transparent where the format has alpha and
    are white in JPEG. `format` may be AUTO, which stands for the AUTO_FORMATS encodings of the same picture.
    """

    width: int = 100
    height: int = 100
    format: str = "jpeg"
    quality: int = 85
    fit: str = "contain"
    gravity: str = "center"
    background: str | None = None
    enlarge: bool = False

    def key(self, renderer_version: int) -> str:
        """Dedupe key of a rendition: every input that changes the output bytes, renderer version included.

        Options at their defaults add nothing, so the keys of renditions from before they existed still match."""
        key = f"{self.width}x{self.height}.{self.format}.q{self.quality}.r{renderer_version}"
        if self.fit != "contain":
            key += f".{self.fit}"
        if self.gravity != "center":
            key += f".g-{self.gravity}"
        if self.background is not None:
            key += f".bg-{self.background}"
        if self.enlarge:
            key += ".up"
        return key

    @property
    def is_plain(self) -> bool:
        """Expressible in rendition v1 (width, height, format, quality only): older readers render it right."""
        return (self.fit, self.gravity, self.background, self.enlarge) == ("contain", "center", None, False) \
            and self.format != AUTO

    @property
    def encodings(self) -> tuple[Rendition, ...]:
        """The concrete renditions to store: three for AUTO, else itself."""
        if self.format != AUTO:
            return (self,)
        return tuple(replace(self, format=fmt) for fmt in AUTO_FORMATS)

    @property
    def served(self) -> Rendition:
        """The encoding served when the client states no preference: JPEG for AUTO (every client takes it)."""
        return replace(self, format="jpeg") if self.format == AUTO else self

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.served.format]


MAX_RENDITIONS = 8


@dataclass(frozen=True)
class Requested:
    source_url: str
    rendition: Rendition = field(default_factory=Rendition)
    callback_url: str | None = None  # POSTed the task's outcome when it ends (the notifier stage)
    owner: str | None = None  # the API key that created the task, when the API requires keys
    more_renditions: tuple[Rendition, ...] = ()  # after the first: all are rendered from one fetch

    @property
    def renditions(self) -> tuple[Rendition, ...]:
        return (self.rendition, *self.more_renditions)


@dataclass(frozen=True)
class Fetched:
    source_url: str
    source_sha256: str
    media_type: str
    image: bytes = field(repr=False)
    rendition: Rendition = field(default_factory=Rendition)
    more_renditions: tuple[Rendition, ...] = ()

    @property
    def renditions(self) -> tuple[Rendition, ...]:
        return (self.rendition, *self.more_renditions)


@dataclass(frozen=True)
class Hashed:
    """The source was downloaded and hashed: a fetched event's facts without its image (for the projector)."""

    source_url: str
    source_sha256: str
    media_type: str
    image_size: int


@dataclass(frozen=True)
class Rendered:
    """One rendition of a finished task: what was asked and what came out (for AUTO, the JPEG's type and size)."""

    rendition: Rendition
    content_type: str
    width: int
    height: int
    size_bytes: int
    deduplicated: bool  # every encoding of it was stored already: nothing was rendered


@dataclass(frozen=True)
class Completed:
    """Every rendition of the task is stored; the flat fields describe the first (as they did when a task had one)."""

    source_sha256: str
    rendition: Rendition
    renderer_version: int
    content_type: str
    width: int
    height: int
    size_bytes: int
    deduplicated: bool
    more_rendered: tuple[Rendered, ...] = ()

    @property
    def rendered(self) -> tuple[Rendered, ...]:
        first = Rendered(self.rendition, self.content_type, self.width, self.height, self.size_bytes, self.deduplicated)
        return (first, *self.more_rendered)

    @staticmethod
    def of(source_sha256: str, rendered: Sequence[Rendered], renderer_version: int) -> Completed:
        first, *more = rendered
        return Completed(source_sha256, first.rendition, renderer_version, first.content_type, first.width,
                         first.height, first.size_bytes, first.deduplicated, tuple(more))


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
# The versions written: the first for what the first could say, the second once a task has several renditions or
# options a v1 reader would ignore (so an older reader dead-letters the event instead of rendering the wrong thing).
WRITTEN_VERSIONS = {REQUESTED: (1, 2), FETCHED: (2, 3), HASHED: (1, 1), COMPLETED: (1, 2), FAILED: (1, 1)}


def needs_renditions_list(renditions: Sequence[Rendition]) -> bool:
    return len(renditions) > 1 or not renditions[0].is_plain


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
        """The version this code writes for this payload (it reads older ones too)."""
        plain, extended = WRITTEN_VERSIONS[self.type]
        payload = self.payload
        if isinstance(payload, Requested | Fetched):
            return extended if needs_renditions_list(payload.renditions) else plain
        if isinstance(payload, Completed):
            return extended if needs_renditions_list([r.rendition for r in payload.rendered]) else plain
        return plain

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


def read_fresh(event: Event, headers: Mapping[str, bytes], now: float) -> bool:
    """Read soon after it was made, as it was made: not a replay or a redrive, nor from a rewind or a long backlog.
    Only then may a stage trust what held when the record was made (the API's row write, the fetcher's dedupe
    lookup); otherwise it checks again. `now` is wall-clock seconds."""
    if REPLAY_HEADER in headers or REDRIVE_HEADER in headers:
        return False
    return now - event.occurred_at_micros / 1e6 < FRESH_S


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
    renditions: tuple[TaskRendition, ...] = ()  # a finished task's, in request order


@dataclass(frozen=True)
class TaskRendition:
    """A finished task's rendition as its row keeps it: what came out, and where each of its encodings is stored."""

    rendered: Rendered
    keys: Mapping[str, str]  # format -> dedupe key of that encoding (three for AUTO)


def renditions_column(done: Completed) -> str:
    """The task row's `renditions` column (JSON) for a completed task."""
    return json.dumps([
        {**asdict(r), "keys": {e.format: e.key(done.renderer_version) for e in r.rendition.encodings}}
        for r in done.rendered
    ], separators=(",", ":"))


def renditions_of_row(columns: Mapping[str, Any]) -> tuple[TaskRendition, ...]:
    """A finished task's renditions from its row; a row written before the `renditions` column existed has one,
    described by the flat columns."""
    if columns.get("renditions"):
        return tuple(_task_rendition(entry) for entry in json.loads(columns["renditions"]))
    if not columns.get("rendition_key"):
        return ()
    asked = Rendition(**json.loads(columns["rendition"])) if columns.get("rendition") else Rendition()
    rendered = Rendered(asked, columns["content_type"], columns["width"], columns["height"],
                        columns.get("size_bytes") or 0, bool(columns.get("deduplicated")))
    return (TaskRendition(rendered, {asked.served.format: columns["rendition_key"]}),)


def _task_rendition(entry: dict[str, Any]) -> TaskRendition:
    keys = entry.pop("keys")
    return TaskRendition(Rendered(**{**entry, "rendition": Rendition(**entry["rendition"])}), keys)


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
    "source_url", "rendition", "renditions", "source_sha256", "rendition_key", "content_type", "width", "height",
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
