"""Projector core: any pipeline event in; the task row update it implies out."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime

from services.common.model import (
    ROW_WRITTEN_HEADER,
    Completed,
    Event,
    Failed,
    Fetched,
    Hashed,
    Requested,
    TaskUpdate,
    read_fresh,
    renditions_column,
)
from services.common.status import Status


def written_by_api(event: Event, headers: Mapping[str, bytes], now: float) -> bool:
    """A request whose PENDING row the API wrote before publishing it, read fresh. One read later (a rewind that
    rebuilds rows, a replay, a long backlog) is written again: its row may be gone or expired since."""
    return isinstance(event.payload, Requested) and ROW_WRITTEN_HEADER in headers and read_fresh(event, headers, now)


def project(event: Event) -> TaskUpdate:
    payload = event.payload
    at = event.occurred_at_micros
    moment = datetime.fromtimestamp(at / 1e6, UTC)
    if isinstance(payload, Requested):
        columns = {"source_url": payload.source_url, "rendition": json.dumps(asdict(payload.rendition)), "created_at": moment}
        columns.update({name: getattr(payload, name) for name in ("owner", "callback_url") if getattr(payload, name)})
        return TaskUpdate(event.task_id, Status.PENDING, at, columns)
    if isinstance(payload, Fetched | Hashed):  # fetched: records produced before thumbnail.hashed existed
        return TaskUpdate(event.task_id, Status.FETCHED, at, {"source_sha256": payload.source_sha256, "fetched_at": moment})
    if isinstance(payload, Completed):
        columns = {
            "source_sha256": payload.source_sha256,
            "rendition_key": payload.rendition.served.key(payload.renderer_version),
            "renditions": renditions_column(payload),
            "content_type": payload.content_type,
            "width": payload.width,
            "height": payload.height,
            "size_bytes": payload.size_bytes,
            "deduplicated": payload.deduplicated,
            "error_code": None,
            "error_message": None,
            "completed_at": moment,
        }
        return TaskUpdate(event.task_id, Status.SUCCESS, at, columns)
    assert isinstance(payload, Failed)
    columns = {"error_code": payload.code, "error_message": payload.message, "completed_at": moment}
    return TaskUpdate(event.task_id, Status.FAILURE, at, columns)
