"""What `thumbs dlq` shows of dead letters, decided without Kafka: DLQ records in, lines and documents out."""
from __future__ import annotations

import base64
import hashlib
import heapq
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from services.common.events import EVENT_HEADER, decode
from services.common.model import Event, EventError, Record

from .core import EPOCH, DeadLetter, ReplayError, read_dead_letter

PREVIEW_CHARS = 160
REASON_CHARS = 120  # a list line stays one line; `dlq show` has the whole reason


@dataclass(frozen=True)
class Entry:
    """One thumbnail.dlq record: where it sits on that topic, and the dead letter it holds (None: unreadable)."""

    partition: int
    offset: int
    timestamp_ms: int
    size: int
    letter: DeadLetter | None

    @property
    def position(self) -> str:
        """`partition:offset`, as `thumbs dlq show` takes it."""
        return f"{self.partition}:{self.offset}"


def entry_of(record: Record) -> Entry:
    return Entry(record.partition, record.offset, record.timestamp_ms, len(record.value or b""), read_dead_letter(record))


def iso_ms(timestamp_ms: int) -> str:
    """A Kafka timestamp as ISO 8601 UTC to the millisecond."""
    return (EPOCH + timedelta(milliseconds=timestamp_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_position(text: str) -> tuple[int | None, int]:
    """`PARTITION:OFFSET` or a bare `OFFSET` (partition None: the topic must have one partition)."""
    partition, _, offset = text.strip().rpartition(":")
    try:
        at = (int(partition) if partition else None, int(offset))
    except ValueError:
        raise ReplayError(f"not PARTITION:OFFSET or OFFSET: {text!r}") from None
    if min(at[0] or 0, at[1]) < 0:
        raise ReplayError(f"partitions and offsets are never negative: {text!r}")
    return at


def matching(
    entries: Iterable[Entry], *, stage: str | None = None, reason: str | None = None, since_ms: int | None = None
) -> Iterator[Entry]:
    """Entries of `stage` whose reason contains `reason` (any case), written at or after `since_ms`.

    An unreadable entry matches no stage or reason.
    """
    for entry in entries:
        letter = entry.letter
        if since_ms is not None and entry.timestamp_ms < since_ms:
            continue
        if (stage is not None or reason is not None) and letter is None:
            continue
        if letter is not None and stage is not None and letter.stage != stage:
            continue
        if letter is not None and reason is not None and reason.lower() not in letter.reason.lower():
            continue
        yield entry


def latest(entries: Iterable[Entry], limit: int) -> tuple[list[Entry], int]:
    """The `limit` most recent entries, oldest first, and how many there were in all.

    Only `limit` entries are held at a time: a dead letter can carry up to 20 MiB of original value.
    """
    count = 0

    def counted() -> Iterator[Entry]:
        nonlocal count
        for entry in entries:
            count += 1
            yield entry

    def when(entry: Entry) -> tuple[int, int, int]:
        return entry.timestamp_ms, entry.partition, entry.offset

    newest = heapq.nlargest(limit, counted(), key=when)
    return sorted(newest, key=when), count


def event_of(letter: DeadLetter) -> Event | None:
    """The original record as an event, when it is a valid one."""
    try:
        return decode(letter.value, letter.headers)
    except EventError:
        return None


def origin(letter: DeadLetter) -> str:
    return f"{letter.source_topic}[{letter.partition}]@{letter.offset}"


def summary(entry: Entry) -> dict[str, Any]:
    """An entry as a flat document: what `dlq list` prints, for machines."""
    doc: dict[str, Any] = {"partition": entry.partition, "offset": entry.offset, "time": iso_ms(entry.timestamp_ms)}
    letter = entry.letter
    if letter is None:
        return doc | {"readable": False, "size": entry.size}
    event = event_of(letter)
    return doc | {
        "readable": True, "stage": letter.stage, "reason": letter.reason, "source_topic": letter.source_topic,
        "source_partition": letter.partition, "source_offset": letter.offset,
        "task_id": event.task_id if event is not None else None,
    }


def line(entry: Entry) -> str:
    """One line of `dlq list`: position, time, stage, origin, task, reason (last: it is the longest)."""
    head = f"{entry.position:<8} {iso_ms(entry.timestamp_ms)}"
    letter = entry.letter
    if letter is None:
        return f"{head}  unreadable dead letter ({entry.size} bytes; not schemas/thumbnail.dlq.v1.json)"
    event = event_of(letter)
    reason = " ".join(letter.reason.split())
    if len(reason) > REASON_CHARS:
        reason = reason[:REASON_CHARS - 1] + "…"
    return f"{head}  {letter.stage:<9} {origin(letter)}  task {event.task_id if event else '-'}  {reason}"


def details(entry: Entry) -> dict[str, Any]:
    """One dead letter in full: where it is, why, where from, and the original record (decoded when it can be)."""
    letter = entry.letter
    if letter is None:
        return summary(entry)
    doc = summary(entry) | {
        "original_key_base64": _b64(letter.key),
        "original_headers": [[name, _b64(raw)] for name, raw in letter.headers],
    }
    return doc | {"original_value": value_facts(letter)}


def value_facts(letter: DeadLetter) -> dict[str, Any]:
    """The event the value held, or (not an event) its size, sha256 and a printable preview."""
    if letter.omitted is not None:
        return {"omitted": True, "size": letter.omitted.size, "sha256": letter.omitted.sha256}
    facts: dict[str, Any] = {"size": len(letter.value), "sha256": hashlib.sha256(letter.value).hexdigest()}
    try:
        event = decode(letter.value, letter.headers)
    except EventError as exc:
        return facts | {"event": None, "not_an_event": str(exc), "preview": preview(letter.value)}
    carried = dict(letter.headers).get(EVENT_HEADER)
    # The event's own JSON, as it was sent; a thumbnail.fetched v2 value is the image and its JSON a header.
    return facts | {"event": json.loads(carried if carried is not None else letter.value), "task_id": event.task_id}


def preview(raw: bytes, chars: int = PREVIEW_CHARS) -> str:
    """The first characters of a value, anything unprintable shown as `.`."""
    head = raw[: chars * 4].decode("utf-8", "replace")  # a character is at most 4 bytes
    shown = "".join(c if c.isprintable() else "." for c in head[:chars])
    return shown + ("…" if len(head) > chars or len(raw) > chars * 4 else "")


def rendered(doc: dict[str, Any]) -> list[str]:
    """`dlq show` for people: labelled lines, headers as text, the event indented."""
    lines = [f"dead letter {doc['partition']}:{doc['offset']}, written {doc['time']}"]
    if not doc["readable"]:
        return [*lines, f"unreadable: {doc['size']} bytes that are not a dead-letter record (schemas/thumbnail.dlq.v1.json)"]
    lines += [
        f"reason:  {doc['reason']}", f"stage:   {doc['stage']}",
        f"origin:  {doc['source_topic']}[{doc['source_partition']}]@{doc['source_offset']}",
        f"key:     {_text(doc['original_key_base64'])}",
        "headers: (none)" if not doc["original_headers"] else "headers:",
        *(f"  {name}: {_text(raw)}" for name, raw in doc["original_headers"]),
    ]
    value = doc["original_value"]
    if value.get("omitted"):
        return [*lines, f"value:   left out of the dead letter (too large): {value['size']} bytes, sha256 {value['sha256']}"]
    if value["event"] is None:
        return [*lines, f"value:   not an event ({value['not_an_event']}): {value['size']} bytes, sha256 {value['sha256']}",
                f"preview: {value['preview']}"]
    event = value["event"]
    lines.append(f"value:   {event['type']} v{event['version']} event of task {value['task_id']}, "
                 f"{value['size']} bytes, sha256 {value['sha256']}")
    return lines + ["  " + part for part in json.dumps(event, indent=2, ensure_ascii=False).splitlines()]


def _b64(raw: bytes | None) -> str | None:
    return None if raw is None else base64.b64encode(raw).decode("ascii")


def _text(encoded: str | None) -> str:
    """A base64 key or header value as people read it: the text when it is printable UTF-8, else its base64."""
    if encoded is None:
        return "(none)"
    if not encoded:
        return "(empty)"
    try:
        text = base64.b64decode(encoded).decode("utf-8")
    except UnicodeDecodeError:
        return f"base64:{encoded}"
    return text if text.isprintable() else f"base64:{encoded}"
