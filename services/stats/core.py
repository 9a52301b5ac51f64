"""Stats core: a pipeline record in, the observation it makes; observations in, the tallies they add up to.

Pure: no Kafka, no Faust. The edge (worker.py) keeps the tallies in Faust tables.

Counting is exactly once although Kafka delivers at least once: every observation names the record it came
from (topic, partition, offset), and a tally remembers the highest offset it has counted per source partition.
A record seen again — resent after a crash, re-read after a rebalance — is at or below that mark and changes
nothing. Replays (`thumbs replay`, header `thumbs-replay`) are new records of tasks already counted: they are
counted under `replayed` only, so a replayed topic never counts a task twice. And a stage that is killed
mid-task may publish a task's outcome twice (at-least-once): the first outcome record of each task is
remembered for OUTCOME_MEMORY_SECONDS, and a later one for the same task counts under `repeated` only.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from services.common.events import decode
from services.common.model import (
    REPLAY_HEADER,
    REQUESTED_AT_HEADER,
    Completed,
    EventError,
    Failed,
    Requested,
)

WINDOW_SECONDS = 10
KEPT_SECONDS = 3600  # windows older than an hour are dropped (Faust expires them and their changelog entries)
KINDS = ("requested", "succeeded", "failed")
# Latency histogram: bucket i holds (RATIO**(i-1), RATIO**i] ms, so a percentile is known within ±4.5 %
# from a few dozen integers per window, however many tasks it saw.
LATENCY_RATIO = 2 ** (1 / 8)
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
# How long a task's first outcome is remembered, to tell a repeated outcome from a first one: a stage re-publishes
# within seconds of its restart. Kept as windows of this length, the current and the previous one looked up.
OUTCOME_MEMORY_SECONDS = 600

Tally = dict[str, Any]


@dataclass(frozen=True)
class Observation:
    """What one pipeline record adds to the statistics."""

    kind: str  # requested, succeeded or failed
    source: str  # "topic:partition" of the record observed
    offset: int
    at: float = 0.0  # the record's Kafka timestamp (s): which window it counts in
    task_id: str = ""
    repeated: bool = False  # another outcome record of a task whose outcome was counted
    replayed: bool = False
    deduplicated: bool = False
    error_code: str | None = None
    latency_ms: float | None = None  # request to outcome, when the outcome carries the request time

    @classmethod
    def of(cls, document: Any) -> Observation | None:
        """None for anything that is not an observation (the topic is internal, but never trust a record)."""
        try:
            observation = cls(**document)
        except TypeError:
            return None
        if observation.kind not in KINDS or not isinstance(observation.offset, int) or not isinstance(observation.at, int | float):
            return None
        return observation


def encode_batch(observations: Sequence[Observation]) -> bytes:
    return json.dumps([asdict(o) for o in observations], separators=(",", ":")).encode()


def decode_batch(raw: bytes | None) -> tuple[list[Observation], int]:
    """The observations of one record, and how many of its entries were not observations."""
    try:
        documents = json.loads(raw or b"")
    except ValueError:
        return [], 1
    if not isinstance(documents, list):
        return [], 1
    observations = [o for o in map(Observation.of, documents) if o is not None]
    return observations, len(documents) - len(observations)


def observe(value: bytes | None, headers: Sequence[tuple[str, bytes | None]], topic: str, partition: int,
            offset: int, at: float = 0.0) -> Observation | None:
    """The observation a requested, completed or failed record makes; None for one that is not a valid event
    (the stage that owns the topic dead-letters it; statistics just leave it out)."""
    try:
        event = decode(value, headers)
    except EventError:
        return None
    named = {name: raw for name, raw in headers if raw is not None}
    requested = Observation("requested", f"{topic}:{partition}", offset, at, event.task_id, replayed=REPLAY_HEADER in named)
    payload = event.payload
    if isinstance(payload, Requested):
        return requested
    if not isinstance(payload, Completed | Failed):
        return None
    latency = _latency_ms(event.occurred_at_micros, named.get(REQUESTED_AT_HEADER))
    if isinstance(payload, Completed):
        return replace(requested, kind="succeeded", deduplicated=payload.deduplicated, latency_ms=latency)
    return replace(requested, kind="failed", error_code=payload.code, latency_ms=latency)


def _latency_ms(outcome_micros: int, requested_at: bytes | None) -> float | None:
    try:
        requested_ms = int(requested_at) if requested_at is not None else None
    except ValueError:
        return None
    if requested_ms is None:
        return None  # produced by something that does not carry the header
    return max(0.0, outcome_micros / 1000 - requested_ms)


def empty() -> Tally:
    return {
        "requested": 0, "succeeded": 0, "failed": 0, "deduplicated": 0, "replayed": 0, "repeated": 0,
        "failures_by_code": {}, "latency_buckets": {}, "marks": {},
    }


def add(tally: Tally | None, observation: Observation) -> Tally | None:
    """A new tally with the observation counted, or None when its record was counted already."""
    counted = empty() if tally is None else tally
    if observation.offset <= counted["marks"].get(observation.source, -1):
        return None
    result = {**counted, "marks": {**counted["marks"], observation.source: observation.offset}}
    if observation.replayed or observation.repeated:
        name = "replayed" if observation.replayed else "repeated"
        result[name] = result.get(name, 0) + 1  # .get: tallies stored before `repeated` existed lack it
        return result
    result[observation.kind] += 1
    if observation.deduplicated:
        result["deduplicated"] += 1
    if observation.error_code:
        codes = dict(result["failures_by_code"])
        codes[observation.error_code] = codes.get(observation.error_code, 0) + 1
        result["failures_by_code"] = codes
    if observation.latency_ms is not None:
        buckets = dict(result["latency_buckets"])
        bucket = str(latency_bucket(observation.latency_ms))  # str: the table's JSON keeps keys as strings
        buckets[bucket] = buckets.get(bucket, 0) + 1
        result["latency_buckets"] = buckets
    return result


@dataclass
class Counted:
    """What a batch of observations does to the tallies: the new ones to store, and how many counted."""

    totals: Tally | None = None  # None: unchanged
    windows: dict[float, Tally] = field(default_factory=dict)  # by window start
    first_outcomes: dict[str, tuple[float, str]] = field(default_factory=dict)  # task id -> (time, record) to remember
    counted: int = 0
    duplicates: int = 0


def count(totals: Tally | None, stored_window: Callable[[float], Tally | None], observations: Sequence[Observation],
          first_outcome: Callable[[str, float], str | None] = lambda _task, _at: None) -> Counted:
    """Adds a batch to the totals and to each observation's window (`stored_window(start)`: its tally so far).

    `first_outcome(task_id, at)` is the record ("topic:partition@offset") of the task's outcome counted first,
    if remembered. A batch becomes one write of the totals and one per window touched, however many records it holds.
    """
    result = Counted()
    total = totals
    windows: dict[float, Tally | None] = {}
    for observation in observations:
        if observation.kind != "requested" and observation.task_id and not observation.replayed:
            record = f"{observation.source}@{observation.offset}"
            known = result.first_outcomes.get(observation.task_id, (0.0, None))[1] or first_outcome(observation.task_id, observation.at)
            if known is None:
                result.first_outcomes[observation.task_id] = (observation.at, record)
            elif known != record:  # the same record read again is no repeat: its marks say whether it counted
                observation = replace(observation, repeated=True)
        start = window_start(observation.at)
        if start not in windows:
            windows[start] = stored_window(start)
        window = add(windows[start], observation)
        if window is not None:
            windows[start] = result.windows[start] = window
        counted = add(total, observation)
        if counted is None:
            result.duplicates += 1
            continue
        total = result.totals = counted
        result.counted += 1
    return result


def window_start(at: float) -> float:
    return float(math.floor(at / WINDOW_SECONDS) * WINDOW_SECONDS)


def latency_bucket(ms: float) -> int:
    return 0 if ms <= 1 else math.ceil(math.log(ms, LATENCY_RATIO))


def percentiles(buckets: Mapping[str, int]) -> dict[str, float] | None:
    """p50, p95, p99 in ms from a latency histogram (each bucket's geometric middle); None when it is empty."""
    counts = sorted((int(bucket), n) for bucket, n in buckets.items())
    total = sum(n for _bucket, n in counts)
    if not total:
        return None
    result = {}
    for name, fraction in PERCENTILES.items():
        rank, seen = math.ceil(fraction * total), 0
        for bucket, n in counts:
            seen += n
            if seen >= rank:
                result[name] = round(LATENCY_RATIO ** (bucket - 0.5), 1) if bucket else 1.0
                break
    return result


def _counts(tally: Tally | None) -> dict[str, Any]:
    tally = tally or empty()
    return {
        "requested": tally["requested"], "succeeded": tally["succeeded"], "failed": tally["failed"],
        "deduplicated": tally["deduplicated"], "replayed": tally["replayed"], "repeated": tally.get("repeated", 0),
        "failures_by_code": dict(sorted(tally["failures_by_code"].items())),
    }


def report(totals: Tally | None, windows: Sequence[tuple[float, Tally]], consumer_lag: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The GET /stats document: running totals, each window's counts and latency (oldest first), and the
    deployed stages' consumer lag as last read (records behind, per stage; {} until read)."""
    return {
        "window_seconds": WINDOW_SECONDS,
        "consumer_lag": dict(consumer_lag or {}),
        "totals": _counts(totals),
        "windows": [
            {"start": datetime.fromtimestamp(start, UTC).isoformat().replace("+00:00", "Z"), **_counts(tally),
             "latency_ms": percentiles(tally["latency_buckets"])}
            for start, tally in sorted(windows, key=lambda window: window[0])
        ],
    }
