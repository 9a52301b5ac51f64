"""The pipeline's events, defined once: envelope, payloads, and the JSON codec every process shares.

Each event type and version has a JSON Schema under `schemas/`; `decode` validates against it, so
what the code accepts is exactly what the published contract allows (unknown fields are ignored).

Events are JSON record values, except `thumbnail.fetched` v2: its value is the source image itself and
its JSON rides in the `thumbs-event` header, so megabytes of image are neither base64-encoded nor parsed
as JSON by every consumer (v1, the image inline as base64, is still read: old records can be replayed).
"""
from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import cache
from typing import Any, Sequence, Union

import jsonschema_rs

from .settings import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas"

REQUESTED = "thumbnail.requested"
FETCHED = "thumbnail.fetched"
COMPLETED = "thumbnail.completed"
FAILED = "thumbnail.failed"
RETRY = "thumbnail.requested.retry"  # requested events waiting for another attempt
EVENT_TYPES = (REQUESTED, FETCHED, COMPLETED, FAILED)
EVENT_HEADER = "thumbs-event"  # carries the event's JSON when the record value is an image
FORMATS = ("jpeg", "png", "webp")
CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


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


@dataclass(frozen=True)
class Fetched:
    source_url: str
    source_sha256: str
    media_type: str
    image: bytes = field(repr=False)
    rendition: Rendition = field(default_factory=Rendition)


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


Payload = Union[Requested, Fetched, Completed, Failed]
_PAYLOAD_TYPES: dict[str, type] = {REQUESTED: Requested, FETCHED: Fetched, COMPLETED: Completed, FAILED: Failed}
_TYPE_OF = {cls: name for name, cls in _PAYLOAD_TYPES.items()}
WRITTEN_VERSIONS = {REQUESTED: 1, FETCHED: 2, COMPLETED: 1, FAILED: 1}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


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

    def follow(self, payload: Payload, producer: str) -> "Event":
        """The next event of the same task."""
        return Event(
            task_id=self.task_id,
            payload=payload,
            producer=producer,
            correlation_id=self.correlation_id or self.event_id,
        )

    def with_payload(self, payload: Payload) -> "Event":
        return replace(self, payload=payload)


@dataclass(frozen=True)
class Outgoing:
    """An event a stage core wants produced; `topic` overrides the event type's own topic (retries)."""

    event: Event
    topic: str | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def encode_dead_letter(
    *, reason: str, stage: str, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]],
) -> bytes:
    """The thumbnail.dlq record: the original record in full, where it came from, and why it was rejected."""
    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode("ascii")

    document = {
        "reason": reason,
        "stage": stage,
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "original_key_base64": b64(key),
        "original_value_base64": b64(value) or "",
        "original_headers": [[name, b64(raw)] for name, raw in headers],
        "dead_lettered_at": now_iso(),
    }
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Encoded:
    """A Kafka record's value and the headers the codec needs (only the event header, for images)."""

    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def encode(event: Event) -> Encoded:
    if isinstance(event.payload, Fetched):
        fetched = event.payload  # not asdict(): it would deep-copy the image bytes
        payload = {
            "source_url": fetched.source_url, "source_sha256": fetched.source_sha256, "media_type": fetched.media_type,
            "image_size": len(fetched.image), "rendition": asdict(fetched.rendition),
        }
        return Encoded(fetched.image, ((EVENT_HEADER, _json(event, payload)),))
    return Encoded(_json(event, asdict(event.payload)))


def _json(event: Event, payload: dict[str, Any]) -> bytes:
    document = {
        "event_id": event.event_id,
        "type": event.type,
        "version": event.version,
        "task_id": event.task_id,
        "occurred_at": event.occurred_at,
        "producer": event.producer,
        "correlation_id": event.correlation_id,
        "payload": payload,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode(value: bytes | None, headers: Sequence[tuple[str, bytes | None]] = ()) -> Event:
    """Parse and validate one record; raises EventError with a reason fit for the dead-letter record."""
    carried = next((raw for name, raw in headers if name == EVENT_HEADER), None)
    raw = value if carried is None else carried
    if not raw:
        raise EventError("empty message" if carried is None else f"empty {EVENT_HEADER} header")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise EventError("an event must be a JSON object")
    kind, version = document.get("type"), document.get("version")
    validator = _validators().get((kind, version))
    if validator is None:
        raise EventError(f"unknown event type/version: {kind!r} v{version!r}")
    if (carried is not None) != (kind == FETCHED and version == 2):
        raise EventError(f"only thumbnail.fetched v2 travels in the {EVENT_HEADER} header, with the image as the value")
    error = min(validator.iter_errors(document), key=lambda e: [str(p) for p in e.instance_path], default=None)
    if error is not None:
        where = "/".join(str(p) for p in error.instance_path) or "(root)"
        raise EventError(f"schema violation at {where}: {error.message[:300]}")
    return _build(kind, document, value if carried is not None else None)


def _build(kind: str, document: dict[str, Any], image: bytes | None) -> Event:
    payload = dict(document["payload"])
    names = _PAYLOAD_TYPES[kind].__dataclass_fields__
    if "rendition" in names:
        payload["rendition"] = Rendition(**{**asdict(Rendition()), **_known(Rendition, payload.get("rendition", {}))})
    if kind == FETCHED:
        payload["image"] = _image_v1(payload.pop("image_base64")) if image is None else _image_v2(image, payload)
    return Event(
        task_id=document["task_id"],
        payload=_PAYLOAD_TYPES[kind](**_known(_PAYLOAD_TYPES[kind], payload)),
        producer=document.get("producer", "unknown"),
        event_id=document["event_id"],
        occurred_at=document.get("occurred_at") or now_iso(),
        correlation_id=document.get("correlation_id", ""),
    )


def _image_v1(text: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise EventError(f"image_base64 is not base64: {exc}") from None


def _image_v2(image: bytes, payload: dict[str, Any]) -> bytes:
    if len(image) != payload["image_size"]:  # a truncated or swapped value must not be rendered
        raise EventError(f"the record value has {len(image)} bytes, the event says image_size {payload['image_size']}")
    return image


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Drop fields this version of the code does not know (additive changes keep the version)."""
    return {k: v for k, v in values.items() if k in cls.__dataclass_fields__}


@cache
def _validators() -> dict[tuple[str, int], jsonschema_rs.Draft202012Validator]:
    # jsonschema-rs, not the pure-Python jsonschema: every stage validates every record it consumes,
    # and this takes ~3 us per event where jsonschema took ~390 us.
    documents = {path.name: json.loads(path.read_text()) for path in sorted(SCHEMA_DIR.glob("*.json"))}
    registry = jsonschema_rs.Registry([(schema["$id"], schema) for schema in documents.values()])
    return {
        (schema["x-event-type"], schema["x-event-version"]):
            jsonschema_rs.Draft202012Validator(schema, registry=registry, validate_formats=True)
        for schema in documents.values() if schema.get("x-event-type")
    }


def schema_examples() -> list[tuple[str, dict[str, Any]]]:
    """(file name, example) for every example in the schema files, for the contract tests."""
    out = []
    for path in sorted(SCHEMA_DIR.glob("*.json")):
        for example in json.loads(path.read_text()).get("examples", []):
            out.append((path.name, example))
    return out
