"""What to replay, decided without Kafka: records in, the records to send (and where) out."""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.common.events import decode
from services.common.model import (
    COMPLETED,
    FAILED,
    FETCHED,
    HASHED,
    REDRIVE_HEADER,
    REPLAY_HEADER,
    REQUESTED,
    RETRY,
    WEBHOOK_RETRY,
    EventError,
    Record,
)

Headers = tuple[tuple[str, bytes], ...]
# Which topics each stage's consumer group reads (see each stage's worker.py).
STAGE_TOPICS = {
    "fetcher": (REQUESTED, RETRY),
    "resizer": (FETCHED,),
    "projector": (REQUESTED, HASHED, COMPLETED, FAILED),
    "notifier": (COMPLETED, FAILED, WEBHOOK_RETRY),
    "stats": (REQUESTED, COMPLETED, FAILED),  # a Faust app: its group commits offsets like the others
}


class ReplayError(Exception):
    """A replay command cannot go ahead; the message tells the operator why."""


@dataclass(frozen=True)
class Resend:
    """A record to produce: where, and with which key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


def parse_time(text: str) -> datetime:
    """ISO 8601 (`2026-11-28T10:15:00Z`, `...+01:00`, or a date); without a zone it means UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReplayError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ms(moment: datetime) -> int:
    """Kafka's timestamp unit, in integer arithmetic (float seconds can land a millisecond early)."""
    return (moment - EPOCH) // timedelta(milliseconds=1)


def task_id_of(record: Record) -> str | None:
    """The task id of a valid event; None for records the stages would dead-letter anyway."""
    try:
        return decode(record.value, record.headers).task_id
    except EventError:
        return None


def select(
    records: Iterable[Record],
    since: datetime | None = None,
    until: datetime | None = None,
    task_ids: Iterable[str] = (),
) -> Iterator[Record]:
    """Records with `since <= time < until` whose value is a valid event (of one of `task_ids`, if given).

    Records that do not decode are left out: re-publishing them would only dead-letter them again.
    """
    wanted = frozenset(t.lower() for t in task_ids)
    low = epoch_ms(since) if since else None
    high = epoch_ms(until) if until else None
    for record in records:
        if (low is not None and record.timestamp_ms < low) or (high is not None and record.timestamp_ms >= high):
            continue
        owner = task_id_of(record)
        if owner is None or (wanted and owner.lower() not in wanted):
            continue
        yield record


def stamped(headers: Headers, name: str, at: str) -> Headers:
    """The headers with `name: at` added; an earlier header of that name is replaced, not stacked."""
    return (*((k, v) for k, v in headers if k != name), (name, at.encode()))


def replayed(record: Record, at: str) -> Resend:
    return Resend(record.topic, record.key, record.value or b"", stamped(record.headers, REPLAY_HEADER, at))


def described(resend: Resend) -> str:
    """One line for a record a dry run would send: where, which task, how big."""
    try:
        task = decode(resend.value, resend.headers).task_id
    except EventError:
        task = "-"
    key = "-" if resend.key is None else resend.key.decode("utf-8", "backslashreplace")
    return f"would send to {resend.topic}: task {task}, key {key}, {len(resend.value)} bytes"


@dataclass(frozen=True)
class Omitted:
    """An original value too large to have been kept in the dead letter: what is left of it."""

    size: int
    sha256: str


@dataclass(frozen=True)
class DeadLetter:
    """A thumbnail.dlq record (schemas/thumbnail.dlq.v1.json) with the original record decoded."""

    reason: str
    stage: str
    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    dead_lettered_ms: int
    omitted: Omitted | None = None


def read_dead_letter(record: Record) -> DeadLetter | None:
    """Any DLQ record this code can read, those whose original value was left out included; None otherwise."""
    try:
        doc = json.loads(record.value or b"")
        key = doc.get("original_key_base64")
        headers = tuple((str(n), base64.b64decode(v) if v else b"") for n, v in doc["original_headers"])
        left_out = doc.get("original_value_omitted")
        return DeadLetter(
            reason=str(doc["reason"]), stage=str(doc["stage"]), source_topic=str(doc["source_topic"]),
            partition=int(doc["partition"]), offset=int(doc["offset"]),
            key=base64.b64decode(key) if key is not None else None,
            value=base64.b64decode(doc["original_value_base64"]), headers=headers,
            dead_lettered_ms=record.timestamp_ms,
            omitted=Omitted(int(left_out["size"]), str(left_out["sha256"])) if left_out is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None


def parse_dead_letter(record: Record) -> DeadLetter | None:
    """A dead letter that can be redriven; None for one this code cannot read back (reported as skipped, never
    guessed at) or whose value was too large to have been kept (nothing to send back)."""
    letter = read_dead_letter(record)
    return None if letter is None or letter.omitted is not None else letter


def redrive_targets(
    dlq_records: Iterable[Record],
    reason: str | None = None,
    *,
    stage: str | None = None,
    since: datetime | None = None,
    allowed_topics: frozenset[str] | None = None,
    at: str = "",
) -> Iterator[Resend]:
    """The original records to send back to their source topics.

    A record dead-lettered by two stages (the projector and the fetcher both read thumbnail.requested)
    has two DLQ records but is sent back once: the topic already delivers it to every stage.
    `allowed_topics` keeps a redrive inside this environment's pipeline topics.
    """
    low = epoch_ms(since) if since else None
    seen: set[tuple[str, int, int]] = set()
    for record in dlq_records:
        letter = parse_dead_letter(record)
        if letter is None:
            continue
        if reason is not None and reason.lower() not in letter.reason.lower():
            continue
        if (stage is not None and letter.stage != stage) or (low is not None and letter.dead_lettered_ms < low):
            continue
        if allowed_topics is not None and letter.source_topic not in allowed_topics:
            continue
        origin = (letter.source_topic, letter.partition, letter.offset)
        if origin in seen:
            continue
        seen.add(origin)
        yield Resend(letter.source_topic, letter.key, letter.value, stamped(letter.headers, REDRIVE_HEADER, at))


@dataclass(frozen=True)
class RewindTarget:
    """Where to move a group's offsets: `kind` is time, offset, earliest or latest."""

    kind: str
    offset: int = 0
    at: datetime | None = None


def target_offset(target: RewindTarget, low: int, high: int, offset_for_time: int | None = None) -> int:
    """The offset to commit for one partition whose records span [low, high).

    `offset_for_time` is Kafka's answer for `target.at`: the first offset at or after it, or -1 when
    every record is older (then the group starts at the end: nothing to replay there).
    """
    if target.kind == "earliest":
        return low
    if target.kind == "latest":
        return high
    if target.kind == "offset":
        return min(max(target.offset, low), high)
    if target.kind == "time":
        if offset_for_time is None or offset_for_time < 0:
            return high
        return min(max(offset_for_time, low), high)
    raise ReplayError(f"unknown rewind target {target.kind!r}")


def check_stage_topic(stage: str, topic: str) -> None:
    if topic not in STAGE_TOPICS.get(stage, ()):
        reads = ", ".join(STAGE_TOPICS.get(stage, ())) or "nothing"
        raise ReplayError(f"the {stage} stage does not read {topic} (it reads {reads})")
