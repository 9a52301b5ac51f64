"""Fetcher core: a thumbnail.requested event in; a fetched, a retry or a failed event out."""
from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from services.common.dedupe import existing
from services.common.errors import ErrorCode, PermanentError, ThumbsError, TransientError
from services.common.media import sniff
from services.common.model import RETRY, Event, EventError, Failed, Fetched, Hashed, Outgoing, Requested
from services.common.ports import Thumbnails
from services.common.retry_topic import RetryPolicy, attempt_of
from services.common.urls import has_web_scheme

log = logging.getLogger(__name__)
STAGE = "fetcher"


class Downloaded(Protocol):
    @property
    def data(self) -> bytes: ...

    @property
    def sha256(self) -> str: ...


class Source(Protocol):
    """Where image bytes come from (the guarded HTTP downloader in production)."""

    async def fetch(self, url: str) -> Downloaded: ...


async def handle_requested(
    event: Event,
    headers: Mapping[str, bytes],
    source: Source,
    policy: RetryPolicy,
    thumbnails: Thumbnails,
    renderer_version: int,
    *,
    now: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
) -> list[Outgoing]:
    payload = event.payload
    if not isinstance(payload, Requested):
        raise EventError(f"{event.type} does not belong on the requested topic")
    attempt = attempt_of(headers)
    try:
        _check_scheme(payload.source_url)
        download = await source.fetch(payload.source_url)
        media_type = sniff(download.data)
    except TransientError as exc:
        if attempt < policy.max_attempts:
            retry_headers = policy.next_attempt(attempt, now(), jitter())
            log.warning("task %s: %s on attempt %d (%s), retrying", event.task_id, exc.code.value, attempt, exc.message)
            return [Outgoing(event, topic=RETRY, headers=retry_headers)]
        return [_failed(event, exc, attempt, f" (gave up after {attempt} attempts)")]
    except ThumbsError as exc:
        return [_failed(event, exc, attempt)]
    # A known image is answered here: its bytes need not travel through Kafka to the resizer again.
    hit = await existing(thumbnails, download.sha256, payload.renditions, renderer_version)
    if hit is not None:
        return [Outgoing(event.follow(hit, STAGE))]
    fetched = Fetched(
        source_url=payload.source_url,
        source_sha256=download.sha256,
        media_type=media_type,
        image=download.data,
        rendition=payload.rendition,
        more_renditions=payload.more_renditions,
    )
    # The projector only records that the task got this far: it is told so without the image, which
    # would otherwise travel from the brokers to it too (half of all consumer traffic).
    hashed = Hashed(payload.source_url, download.sha256, media_type, len(download.data))
    return [Outgoing(event.follow(fetched, STAGE)), Outgoing(event.follow(hashed, STAGE))]


def _check_scheme(url: str) -> None:
    if not has_web_scheme(url):
        raise PermanentError(ErrorCode.INVALID_REQUEST, "source_url must be an http or https URL")


def _failed(event: Event, error: ThumbsError, attempt: int, suffix: str = "") -> Outgoing:
    return Outgoing(event.follow(Failed(STAGE, error.code.value, error.message + suffix, attempt), STAGE))
