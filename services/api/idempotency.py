"""Idempotent submits: a client that retries `POST /thumbnail` with the same `Idempotency-Key` gets the same task.

The key's claim lives in Cassandra for a day, written with a lightweight transaction, so every API process (and a
restarted one) sees the first request's claim. A claim records the task it stands for and the request's fingerprint;
whether that task was accepted shows in its task row, which the API writes once Kafka has acknowledged the request
(and the projector writes too). What a second request with the key gets follows from these (`decide`). One
lightweight transaction per keyed request: marking the claim accepted would have been a second.
"""
from __future__ import annotations

import enum
import hashlib
import json
from datetime import UTC, datetime, timedelta

from services.common.events import rendition_document
from services.common.model import IdempotencyClaim, Requested

from .validation import ApiError

HEADER = "idempotency-key"
KEY_MAX_LENGTH = 255
# A claim whose task has no row after this long belongs to a request that died between claiming the key and
# publishing (the publish waits at most 5 s): a retry may then publish the claimed task itself.
STALE_AFTER = timedelta(seconds=30)


class Decision(enum.Enum):
    REUSE = "reuse"  # the same request, already accepted: answer with its task
    CONFLICT = "conflict"  # the key was used for a different request
    IN_FLIGHT = "in flight"  # the first request with the key is still publishing its event
    TAKE_OVER = "take over"  # the first request died before publishing: publish its task now


def parse_key(value: str | None) -> str | None:
    """The header's key, None when absent; 1-255 visible ASCII characters, as the IETF draft's examples use."""
    if value is None:
        return None
    if not 0 < len(value) <= KEY_MAX_LENGTH or not all("!" <= c <= "~" for c in value):
        raise ApiError(400, "INVALID_IDEMPOTENCY_KEY",
                       f"Idempotency-Key must be 1 to {KEY_MAX_LENGTH} visible ASCII characters (a UUID, for example)")
    return value


def fingerprint(request: Requested) -> str:
    """The request as parsed, not as sent: key order, spacing and spelt-out defaults do not make it another request.
    The owner is left out: it is the key's scope already."""
    # A plain rendition as v1 wrote it, so claims made before fit modes existed still match.
    document: dict[str, object] = {"source_url": request.source_url, "rendition": rendition_document(request.rendition)}
    if request.more_renditions:
        document["more_renditions"] = [rendition_document(r) for r in request.more_renditions]
    if request.callback_url is not None:  # only when set, so claims made before callbacks existed still match
        document["callback_url"] = request.callback_url
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def claim_time() -> datetime:
    """Now, to the millisecond: Cassandra keeps timestamps in milliseconds, and a take-over compares them exactly."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def decide(existing: IdempotencyClaim, request_fingerprint: str, now: datetime, *, accepted: bool) -> Decision:
    """`accepted`: the claimed task has a row, so its request was acknowledged by Kafka."""
    if existing.fingerprint != request_fingerprint:
        return Decision.CONFLICT
    if accepted:
        return Decision.REUSE
    return Decision.TAKE_OVER if now - existing.claimed_at >= STALE_AFTER else Decision.IN_FLIGHT


def conflict_error() -> ApiError:
    return ApiError(409, "IDEMPOTENCY_KEY_REUSED",
                    "this Idempotency-Key was used with a different request in the last 24 hours; use a new key")


def in_flight_error() -> ApiError:
    return ApiError(409, "IDEMPOTENCY_KEY_IN_USE",
                    "a request with this Idempotency-Key is still being accepted; retry shortly", {"Retry-After": "1"})
