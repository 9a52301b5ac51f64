"""The pipeline's events, defined once: envelope, payloads, and the JSON codec every process shares.

Each event type and version has a JSON Schema under `schemas/` (installed as the package `services.contract`);
`decode` validates against it, so what the code accepts is exactly what the published contract allows
(unknown fields are ignored).

Events are JSON record values, except `thumbnail.fetched` v2 and v3: its value is the source image itself and
its JSON rides in the `thumbs-event` header, so megabytes of image are neither base64-encoded nor parsed
as JSON by every consumer (v1, the image inline as base64, is still read: old records can be replayed).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import jsonschema_rs

from .model import (
    _PAYLOAD_TYPES,
    COMPLETED,
    FETCHED,
    WRITTEN_VERSIONS,
    Completed,
    Event,
    EventError,
    Fetched,
    Rendered,
    Rendition,
    Requested,
    now_iso,
)

# pyproject.toml maps the repository's schemas/ to this package, so an installed wheel carries the contract.
SCHEMA_PACKAGE = "services.contract"

EVENT_HEADER = "thumbs-event"  # carries the event's JSON when the record value is an image
# Base64 adds a third: 20 MiB of original value makes a dead letter of ~27 MiB, under the topics' 32 MiB.
DLQ_MAX_ORIGINAL_BYTES = 20 * 1024 * 1024


def encode_dead_letter(
    *, reason: str, stage: str, topic: str, partition: int, offset: int,
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]],
) -> bytes:
    """The thumbnail.dlq record: the original record in full, where it came from, and why it was rejected.

    A value too large to fit the topic once base64-encoded is left out (its size and sha256 kept instead):
    a dead letter Kafka refuses would stall the partition behind it for good.
    """
    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode("ascii")

    kept = value if value is None or len(value) <= DLQ_MAX_ORIGINAL_BYTES else None

    document = {
        "reason": reason,
        "stage": stage,
        "source_topic": topic,
        "partition": partition,
        "offset": offset,
        "original_key_base64": b64(key),
        "original_value_base64": b64(kept) or "",
        "original_headers": [[name, b64(raw)] for name, raw in headers],
        "dead_lettered_at": now_iso(),
    }
    if value is not None and kept is None:
        document["original_value_omitted"] = {"size": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    return json.dumps(document, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Encoded:
    """A Kafka record's value and the headers the codec needs (only the event header, for images)."""

    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


def encode(event: Event) -> Encoded:
    payload: dict[str, Any]
    extended = event.version != WRITTEN_VERSIONS[event.type][0]  # the version with lists of renditions
    if isinstance(event.payload, Fetched):
        fetched = event.payload  # not asdict(): it would deep-copy the image bytes
        payload = {
            "source_url": fetched.source_url, "source_sha256": fetched.source_sha256, "media_type": fetched.media_type,
            "image_size": len(fetched.image), **_renditions_field(fetched.renditions, extended),
        }
        return Encoded(fetched.image, ((EVENT_HEADER, _json(event, payload)),))
    if isinstance(event.payload, Requested):  # optional fields are left out unset, as the schema's examples show
        requested = event.payload
        payload = {"source_url": requested.source_url, **_renditions_field(requested.renditions, extended)}
        payload.update({name: value for name in ("callback_url", "owner") if (value := getattr(requested, name))})
        return Encoded(_json(event, payload))
    if isinstance(event.payload, Completed):
        done = event.payload
        payload = {name: getattr(done, name) for name in _COMPLETED_FLAT}
        payload["rendition"] = rendition_document(done.rendition)
        if extended:
            payload["renditions"] = [
                {"rendition": rendition_document(r.rendition), **{name: getattr(r, name) for name in _RENDERED_FLAT}}
                for r in done.rendered
            ]
        return Encoded(_json(event, payload))
    return Encoded(_json(event, asdict(event.payload)))


_COMPLETED_FLAT = ("source_sha256", "renderer_version", "content_type", "width", "height", "size_bytes", "deduplicated")
_RENDERED_FLAT = ("content_type", "width", "height", "size_bytes", "deduplicated")
_PLAIN_FIELDS = ("width", "height", "format", "quality")


def rendition_document(rendition: Rendition) -> dict[str, Any]:
    """A rendition as events carry it: a plain one with rendition.v1's fields only, so v1 readers see what they know."""
    if rendition.is_plain:
        return {name: getattr(rendition, name) for name in _PLAIN_FIELDS}
    return {name: value for name, value in asdict(rendition).items() if value is not None}


def _renditions_field(renditions: Sequence[Rendition], extended: bool) -> dict[str, Any]:
    if extended:
        return {"renditions": [rendition_document(r) for r in renditions]}
    return {"rendition": rendition_document(renditions[0])}


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
    validator = _validators().get((kind, version)) if isinstance(kind, str) and isinstance(version, int) else None
    if validator is None or not isinstance(kind, str):
        raise EventError(f"unknown event type/version: {kind!r} v{version!r}")
    if (carried is not None) != (kind == FETCHED and (version or 0) >= 2):
        raise EventError(f"only thumbnail.fetched v2+ travels in the {EVENT_HEADER} header, with the image as the value")
    error = min(validator.iter_errors(document), key=lambda e: [str(p) for p in e.instance_path], default=None)
    if error is not None:
        where = "/".join(str(p) for p in error.instance_path) or "(root)"
        raise EventError(f"schema violation at {where}: {error.message[:300]}")
    return _build(kind, document, value if carried is not None else None)


def _build(kind: str, document: dict[str, Any], image: bytes | None) -> Event:
    payload = dict(document["payload"])
    if "rendition" in payload:
        payload["rendition"] = _rendition(payload["rendition"])
    if kind == COMPLETED and "renditions" in payload:  # v2: the flat fields repeat the first entry
        payload["more_rendered"] = tuple(
            Rendered(_rendition(entry["rendition"]), **{name: entry[name] for name in _RENDERED_FLAT})
            for entry in payload.pop("renditions")[1:]
        )
    elif "renditions" in payload:  # requested v2, fetched v3
        first, *more = (_rendition(entry) for entry in payload.pop("renditions"))
        payload.update(rendition=first, more_renditions=tuple(more))
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


def _rendition(values: dict[str, Any]) -> Rendition:
    return Rendition(**_known(Rendition, values))


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
    return {k: v for k, v in values.items() if k in fields_of(cls)}


@cache
def fields_of(cls: type) -> frozenset[str]:
    """Field names of a payload dataclass; cached, as every consumed event asks (twice)."""
    return frozenset(f.name for f in dataclasses.fields(cls))


@cache
def _validators() -> dict[tuple[str, int], jsonschema_rs.Draft202012Validator]:
    # jsonschema-rs, not the pure-Python jsonschema: every stage validates every record it consumes,
    # and this takes ~3 us per event where jsonschema took ~390 us.
    documents = schema_documents()
    registry = jsonschema_rs.Registry([(schema["$id"], schema) for schema in documents.values()])
    return {
        (schema["x-event-type"], schema["x-event-version"]):
            jsonschema_rs.Draft202012Validator(schema, registry=registry, validate_formats=True)
        for schema in documents.values() if schema.get("x-event-type")
    }


def schema_files() -> list[Traversable]:
    """Every schema file of the contract, by name; from the source tree or an installed wheel alike."""
    return sorted((f for f in files(SCHEMA_PACKAGE).iterdir() if f.name.endswith(".json")), key=lambda f: f.name)


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name → parsed schema, for every schema file."""
    return {f.name: json.loads(f.read_text(encoding="utf-8")) for f in schema_files()}


def schema_examples() -> list[tuple[str, dict[str, Any]]]:
    """(file name, example) for every example in the schema files, for the contract tests."""
    return [(name, example) for name, schema in schema_documents().items() for example in schema.get("examples", [])]
