"""Live task events: successive snapshots of one task row in, the Server-Sent Events to send out (no I/O)."""
from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

from services.common.backoff import backoff_seconds
from services.common.model import AUTO, StoredThumbnail, TaskRendition, TaskView
from services.common.status import Status

FIRST_POLL_SECONDS = 0.1
MAX_POLL_SECONDS = 2.0


def error_body(code: str, message: str) -> dict[str, object]:
    # The top-level "message" keeps clients of the replaced system working.
    return {"error": {"code": code, "message": message}, "message": message}


def webhook_of(view: TaskView) -> dict[str, object]:
    """The completion webhook's delivery: pending until the notifier records an attempt."""
    return {"state": view.webhook_state or "pending", "attempts": view.webhook_attempts or 0,
            "last_status": view.webhook_last_status}


def status_body(view: TaskView, stored: Sequence[StoredThumbnail] | None = None) -> dict[str, object]:
    """The task as GET /thumbnail shows it; the thumbnails' bytes (base64) only when `stored` (one per rendition,
    the encoding served by default) is given.

    The top-level fields describe the first rendition, as they did when a task had one; `renditions` lists them
    all. Without `stored`, content types and sizes come from the row, which the projector writes with the values
    the stored thumbnails have.
    """
    body: dict[str, object] = {"task_id": view.task_id, "status": view.status.value}
    if view.callback_url:
        body["webhook"] = webhook_of(view)
    if view.status is Status.SUCCESS:
        body["message"] = "ok"
        entries = [rendition_body(r, stored[i] if stored else None) for i, r in enumerate(view.renditions)]
        if entries:
            body.update({name: entries[0][name] for name in ("base64_thumbnail_data", "content_type", "width", "height")
                         if name in entries[0]})
        else:  # a row without its renditions yet (it is being written): the flat columns
            body.update(content_type=view.content_type, width=view.width, height=view.height)
        body["source_sha256"] = view.source_sha256
        body["renditions"] = entries
    elif view.status is Status.FAILURE:
        body.update(message=view.error_message or "failed", error={"code": view.error_code, "message": view.error_message})
    else:
        body.update(message="in progress", status=Status.PENDING.value, stage=view.status.value)
    return body


def rendition_body(task_rendition: TaskRendition, stored: StoredThumbnail | None) -> dict[str, object]:
    rendered = task_rendition.rendered
    entry: dict[str, object] = {
        "rendition": asdict(rendered.rendition),
        "content_type": rendered.content_type, "width": rendered.width, "height": rendered.height,
        "deduplicated": rendered.deduplicated,
    }
    if rendered.rendition.format == AUTO:
        entry["formats"] = list(task_rendition.keys)
    if stored is not None:
        entry["base64_thumbnail_data"] = base64.b64encode(stored.data).decode("ascii")
    return entry


@dataclass(frozen=True)
class StreamEvent:
    kind: str  # the SSE `event:` field: "status", then "timeout" or "error" for a stream ended early
    sequence: int  # the SSE `id:` field, counting from 1 in each stream
    data: dict[str, object]


class TaskWatch:
    """One stream's state: what was last sent, the event sequence, when to look again and when to stop."""

    def __init__(self, task_id: str, started_at: float, max_seconds: float, *,
                 jitter: Callable[[], float] = lambda: 0.5) -> None:
        self.task_id = task_id
        self.finished = False
        self._deadline = started_at + max_seconds
        self._jitter = jitter  # uniform in [0, 1): spreads the polls of streams opened together
        self._sent: Status | None = None
        self._last_data: dict[str, object] = {}
        self._sequence = 0
        self._unchanged_looks = 0

    def observe(self, view: TaskView | None) -> StreamEvent | None:
        """The event this snapshot calls for: one per status change, none for an unchanged one."""
        if self.finished:
            return None
        if view is None:  # the row is gone (its TTL ran out): nothing more will ever change
            return self._end("error", error_body("TASK_NOT_FOUND", f"no task {self.task_id}"))
        if view.status is self._sent:
            self._unchanged_looks += 1
            return None
        self._sent, self._unchanged_looks = view.status, 0
        self.finished = view.status.terminal
        return self._next("status", status_body(view))

    def poll_seconds(self) -> float:
        """The wait before the next look: short right after a change, doubling while nothing changes."""
        return backoff_seconds(self._unchanged_looks + 1, base=FIRST_POLL_SECONDS, cap=MAX_POLL_SECONDS,
                               jitter=self._jitter())

    def next_wait(self, now: float) -> float | None:
        """Seconds to wait before the next look, never past the stream's lifetime; None once that is over."""
        remaining = self._deadline - now
        return None if remaining <= 0 else min(self.poll_seconds(), remaining)

    def timeout(self) -> StreamEvent:
        """The last event of a stream whose lifetime is over: the last status sent, for a client to reconnect or poll."""
        return self._end("timeout", self._last_data)

    def failed(self, body: dict[str, object]) -> StreamEvent:
        """The last event of a stream that cannot go on (the task store failed)."""
        return self._end("error", body)

    def _end(self, kind: str, data: dict[str, object]) -> StreamEvent:
        self.finished = True
        return self._next(kind, data)

    def _next(self, kind: str, data: dict[str, object]) -> StreamEvent:
        self._sequence += 1
        if kind == "status":
            self._last_data = data
        return StreamEvent(kind, self._sequence, data)


class Counted(Protocol):
    def inc(self) -> None: ...

    def dec(self) -> None: ...


class StreamSlots:
    """The open streams of one process, at most `limit` at a time; `held` (a gauge) follows the count."""

    def __init__(self, limit: int, held: Counted | None = None) -> None:
        self.limit = limit
        self.open = 0
        self._held = held

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        if self._held is not None:
            self._held.inc()
        return True

    def give_back(self) -> None:
        self.open -= 1
        if self._held is not None:
            self._held.dec()
