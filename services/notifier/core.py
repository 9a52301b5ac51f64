"""Notifier core: a task's outcome event in; its signed completion webhook sent, the attempt recorded, a retry out."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Protocol

from services.common.model import (
    WEBHOOK_DELIVERED,
    WEBHOOK_FAILED,
    WEBHOOK_PENDING,
    WEBHOOK_RETRY,
    Completed,
    Event,
    EventError,
    Failed,
    Outgoing,
    TaskView,
    WebhookDelivery,
)
from services.common.retry_topic import RetryPolicy, attempt_of

log = logging.getLogger(__name__)
STAGE = "notifier"
TIMESTAMP_HEADER = "X-Thumbs-Timestamp"
DELIVERY_HEADER = "X-Thumbs-Delivery"
SIGNATURE_HEADER = "X-Thumbs-Signature"
SETTLED = frozenset({WEBHOOK_DELIVERED, WEBHOOK_FAILED})
# The projector reads the same outcome at the same time. A receiver told "done" fetches the thumbnail at once, so the
# row gets this long to show the outcome first; a projector further behind than that does not hold the webhook up.
PROJECTION_WAIT_S, PROJECTION_POLL_S = 2.0, 0.05


@dataclass(frozen=True)
class Answer:
    """What a receiver made of one delivery: its HTTP status, or None when it gave no answer (timeout, refused)."""

    status: int | None
    permanent: bool = False  # never worth another attempt: a forbidden address, an unusable URL
    reason: str = ""

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Receiver(Protocol):
    """Where webhooks go (the guarded HTTP sender in production)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...


class WebhookRows(Protocol):
    """The task rows: what the webhook goes to, and the record of each attempt (TaskRepository in production)."""

    async def get(self, task_id: str) -> TaskView | None: ...

    async def record_webhook(self, delivery: WebhookDelivery) -> None: ...


SigningSecret = Callable[[str | None], Awaitable[str]]  # the task's owner -> the key its webhooks are signed with ("" for none)


@dataclass(frozen=True)
class Notified:
    """What became of one outcome record: `outcome` is delivered, retried or failed (None: nothing was sent), and
    `outputs` the retry to publish, if any."""

    outcome: str | None = None
    outputs: list[Outgoing] = field(default_factory=list)


def webhook_body(event: Event) -> bytes:
    """The JSON a receiver gets: the outcome, with the thumbnail's metadata (never its bytes) or the error."""
    payload = event.payload
    status = "SUCCESS" if isinstance(payload, Completed) else "FAILURE"
    document: dict[str, object] = {"task_id": event.task_id, "status": status, "occurred_at": event.occurred_at}
    if isinstance(payload, Completed):
        document["thumbnail"] = {
            "content_type": payload.content_type, "width": payload.width, "height": payload.height,
            "source_sha256": payload.source_sha256, "deduplicated": payload.deduplicated,
            "url": f"/thumbnail/file?task_id={event.task_id}",
        }
        document["renditions"] = [  # every rendition, in request order; `thumbnail` is the first
            {"rendition": asdict(r.rendition), "content_type": r.content_type, "width": r.width, "height": r.height,
             "deduplicated": r.deduplicated, "url": f"/thumbnail/file?task_id={event.task_id}&rendition={i}"}
            for i, r in enumerate(payload.rendered)
        ]
    else:
        assert isinstance(payload, Failed)
        document["error"] = {"code": payload.code, "message": payload.message}
    return json.dumps(document, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256 of `{timestamp}.{body}`: the timestamp is signed too, so an old delivery
    cannot be replayed under a fresh one."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def signed_headers(secret: str, delivery_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: delivery_id,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


async def notify(
    event: Event,
    headers: Mapping[str, bytes],
    rows: WebhookRows,
    receiver: Receiver,
    signing_secret: SigningSecret,
    policy: RetryPolicy,
    *,
    now: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
    pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Notified:
    if not isinstance(event.payload, Completed | Failed):
        raise EventError(f"{event.type} is no task outcome: it does not belong on the notifier's topics")
    attempt = attempt_of(headers)
    task = await rows.get(event.task_id)
    if task is None or task.source_url is None:
        # The request is not in the row yet (the projector lags, or the task was produced straight to Kafka and
        # ended quickly): whether it asked for a webhook is not known, so look again later, a bounded number of times.
        if attempt < policy.max_attempts:
            return Notified(None, [_retry(event, attempt, policy, now(), jitter())])
        log.warning("task %s: no request in its row after %d attempts; no webhook sent", event.task_id, attempt)
        return Notified()
    url = task.callback_url
    if not url or task.webhook_state in SETTLED:
        return Notified()  # no webhook asked for, or settled already (a re-delivered or replayed outcome)
    secret = await signing_secret(task.owner)
    if not secret:  # unsigned webhooks are not offered
        log.warning("task %s: no key to sign its webhook with; given up", event.task_id)
        await _record(rows, event, WEBHOOK_FAILED, attempt, None, now())
        return Notified(WEBHOOK_FAILED)
    await _projected(rows, task, pause)
    body = webhook_body(event)
    # The delivery id is the outcome event's id: the same for every attempt and every replay of that outcome.
    answer = await receiver.post(url, body, signed_headers(secret, event.event_id, int(now()), body))
    return await _settle(rows, event, attempt, answer, policy, now, jitter)


async def _settle(rows: WebhookRows, event: Event, attempt: int, answer: Answer, policy: RetryPolicy,
                  now: Callable[[], float], jitter: Callable[[], float]) -> Notified:
    """Records what became of an attempt; a retry to publish when another one is due."""
    if answer.delivered:
        await _record(rows, event, WEBHOOK_DELIVERED, attempt, answer.status, now())
        return Notified(WEBHOOK_DELIVERED)
    why = f"HTTP {answer.status}" if answer.status is not None else answer.reason or "no answer"
    if answer.permanent or attempt >= policy.max_attempts:
        log.warning("task %s: webhook given up on attempt %d (%s)", event.task_id, attempt, why)
        await _record(rows, event, WEBHOOK_FAILED, attempt, answer.status, now())
        return Notified(WEBHOOK_FAILED)
    log.warning("task %s: webhook attempt %d failed (%s), retrying", event.task_id, attempt, why)
    await _record(rows, event, WEBHOOK_PENDING, attempt, answer.status, now())
    return Notified("retried", [_retry(event, attempt, policy, now(), jitter())])


async def _projected(rows: WebhookRows, task: TaskView, pause: Callable[[float], Awaitable[None]]) -> None:
    """Returns once the task's row shows a terminal status, or after PROJECTION_WAIT_S."""
    for _ in range(int(PROJECTION_WAIT_S / PROJECTION_POLL_S)):
        if task.status.terminal:
            return
        await pause(PROJECTION_POLL_S)
        task = await rows.get(task.task_id) or task


def _retry(event: Event, attempt: int, policy: RetryPolicy, now: float, jitter: float) -> Outgoing:
    return Outgoing(event, topic=WEBHOOK_RETRY, headers=policy.next_attempt(attempt, now, jitter))


async def _record(rows: WebhookRows, event: Event, state: str, attempt: int, status: int | None, now: float) -> None:
    await rows.record_webhook(WebhookDelivery(event.task_id, state, attempt, status, int(now * 1_000_000)))
