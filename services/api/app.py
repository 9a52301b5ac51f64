"""The HTTP API: accepts thumbnail requests into Kafka and answers task status from Cassandra."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import aiohttp
from aiohttp.abc import AbstractResolver
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path

from services.common import tracing
from services.common.kafka import PublishError
from services.common.metrics import HELD_REQUESTS, STAGE_READY, identify
from services.common.model import AUTO, ROW_WRITTEN_HEADER, Event, IdempotencyClaim, Requested, StoredThumbnail, TaskView
from services.common.ports import IdempotencyKeys, Tasks, Thumbnails
from services.common.settings import Settings
from services.common.status import Status
from services.projector.core import project

from . import idempotency, periodic, stats
from .access import Access, KeyStore, keep_synced
from .backlog_watch import LagReader, refuse_when_full, start_watching
from .backpressure import Backlog
from .callbacks import CallbackCheck
from .metrics import HttpMetrics
from .negotiation import negotiated_format
from .openapi import DOCS_HTML, openapi_spec
from .task_events import StreamEvent, StreamSlots, TaskWatch, error_body, status_body
from .thumbnail_cache import CachedThumbnails
from .validation import (
    MAX_BODY_BYTES,
    ApiError,
    parse_rendition_index,
    parse_task_id,
    parse_thumbnail_request,
    parse_wait,
)

log = logging.getLogger(__name__)
READY = STAGE_READY.labels("api")
IMMUTABLE = "public, max-age=31536000, immutable"
PING_SECONDS = 15  # a comment line this often keeps proxies from closing a quiet stream
PAGE = Path(__file__).with_name("page")  # the page at /, shipped in the wheel as package data


class Publisher(Protocol):
    async def publish_event(self, event: Event, headers: Sequence[tuple[str, bytes]] | None = None) -> None: ...

    def reachable(self, timeout: float = 2.0) -> bool: ...


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status, headers)


def store_unavailable() -> ApiError:
    return ApiError(503, "UNAVAILABLE", "the task store is unavailable, try again shortly", {"Retry-After": "5"})


MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's: where worker processes write their metrics


def app_from_environment() -> Starlette:
    """The app of one of several API worker processes (uvicorn imports it by name in each)."""
    return create_app(Settings.from_env())


def create_app(
    settings: Settings,
    *,
    publisher: Publisher | None = None,
    tasks: Tasks | None = None,
    thumbnails: Thumbnails | None = None,
    idempotency_keys: IdempotencyKeys | None = None,
    lag_reader: LagReader | None = None,
    api_keys: KeyStore | None = None,
    callback_resolver: AbstractResolver | None = None,
) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        identify("api", settings.renderer_version)
        tracing.configure("api")
        closers: list[Callable[[], None]] = []
        if publisher is None or tasks is None or thumbnails is None or idempotency_keys is None:
            from .wiring import real_adapters  # imported late: no clients at import time

            built, closers = real_adapters(settings)
            app.state.publisher = publisher or built.publisher
            app.state.tasks = tasks or built.tasks
            app.state.thumbnails = thumbnails or CachedThumbnails(built.thumbnails, settings.api_cache_bytes)
            app.state.idempotency_keys = idempotency_keys or built.idempotency_keys
            api_keys_used: KeyStore | None = api_keys or built.api_keys
        else:
            app.state.publisher, app.state.tasks, app.state.thumbnails = publisher, tasks, thumbnails
            app.state.idempotency_keys = idempotency_keys
            api_keys_used = api_keys
        app.state.access = Access(api_keys_used, required=settings.auth == "required")
        syncing = asyncio.create_task(keep_synced(app.state.access)) if app.state.access.required else None
        app.state.backlog = Backlog(settings.max_backlog)
        app.state.stream_slots = StreamSlots(settings.sse_max_streams, HELD_REQUESTS.labels("events"))
        app.state.wait_slots = StreamSlots(settings.max_waiting, HELD_REQUESTS.labels("wait"))
        app.state.settings = settings
        app.state.callbacks = CallbackCheck(allow=settings.fetch_allow_networks,
                                            resolver=callback_resolver or aiohttp.ThreadedResolver())
        watcher = start_watching(app.state.backlog, settings, lag_reader)  # None while THUMBS_MAX_BACKLOG is 0
        app.state.stats_http = aiohttp.ClientSession()
        try:
            yield
        finally:
            await app.state.stats_http.close()
            await periodic.cancel(watcher)
            await periodic.cancel(syncing)
            for close in closers:
                close()

    routes = [
        Route("/thumbnail", submit, methods=["POST"]),
        Route("/thumbnail", status, methods=["GET"]),
        Route("/thumbnail/file", file, methods=["GET"]),
        Route("/thumbnail/events", events, methods=["GET"]),
        Route("/stats", live_stats, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/livez", health, methods=["GET"]),  # the stages' probe paths, so every process answers the same
        Route("/readyz", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/docs", docs, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets"),
        Route("/", page, methods=["GET"]),
        Mount("/page", StaticFiles(directory=PAGE), name="page"),
    ]
    handlers = {ApiError: on_api_error, 404: on_not_found, 405: on_method_not_allowed}
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.add_middleware(HttpMetrics)
    return app


async def submit(request: Request) -> Response:
    caller = await request.app.state.access.caller(request.headers)
    # Counted before the body is read: a client over its rate costs no parsing.
    rate_headers = (await request.app.state.access.admit(caller)).headers() if caller is not None else {}
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "BODY_TOO_LARGE", f"request body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "BODY_TOO_LARGE", f"request body is larger than {MAX_BODY_BYTES} bytes")
    source_url, renditions, callback_url = parse_thumbnail_request(request.headers.get("content-type", ""), bytes(body))
    wait = parse_wait(request.query_params.get("wait"))
    key = idempotency.parse_key(request.headers.get(idempotency.HEADER))
    # With keys, each key signs its own webhooks (the secret `thumbs keys create` printed).
    await request.app.state.callbacks.check(callback_url, signable=caller is not None or bool(request.app.state.settings.webhook_secret))
    refuse_when_full(request.app.state.backlog)  # after validation: bad input gets its 4xx, not an invitation to retry
    event_id = str(uuid.uuid4())
    event = Event(
        task_id=str(uuid.uuid4()), payload=Requested(source_url, renditions[0], callback_url, caller.name if caller else None, renditions[1:]),
        producer="api",
        event_id=event_id, correlation_id=event_id,
    )
    headers = dict(rate_headers)
    if key is None:
        await _accept(request, event)
    else:
        accepted = await _accept_once(request, key, event, scope=caller.name if caller else "")
        if accepted is not event:
            headers["Idempotent-Replayed"] = "true"
        event = accepted
    request.state.task_id = event.task_id  # for the access log line
    headers["Location"] = f"/thumbnail?task_id={event.task_id}"
    if wait:  # the task is accepted whatever happens now: any trouble while waiting answers 202 as without wait
        with contextlib.suppress(ApiError):
            view = await _stored_task(request, event.task_id)
            if view is not None and (view := await _finished_within(request, view, wait)).status.terminal:
                return await _status_response(request, view, headers)
    return JSONResponse({"task_id": event.task_id}, 202, headers)


async def _accept(request: Request, event: Event) -> None:
    """Records the task PENDING, then publishes the requested event, saying so: the projector need not write the
    row again (a Cassandra write per task). Written first so a GET right after this answer never sees 404; the
    lowest rank keeps the projector's later writes winning. If the publish then fails, the client gets 503 and
    the row is never looked at (nobody learnt its task id) until it expires."""
    headers = tracing.carried(())  # the request's trace, when on
    if await _record_pending(request, event):  # else the projector writes the row
        headers.append((ROW_WRITTEN_HEADER, b"1"))
    await _publish(request, event, headers)


async def _publish(request: Request, event: Event, headers: list[tuple[str, bytes]]) -> None:
    try:
        await request.app.state.publisher.publish_event(event, headers)
    except PublishError as exc:
        log.warning("publish failed: %s", exc)
        raise ApiError(503, "UNAVAILABLE", "the queue is unavailable, try again shortly", {"Retry-After": "5"}) from None


async def _accept_published_first(request: Request, event: Event) -> None:
    """Publishes, then records the task PENDING: for an Idempotency-Key, whose decisions read a row as proof that
    the key's task was accepted."""
    await _publish(request, event, tracing.carried(()))
    await _record_pending(request, event)  # the task is accepted either way; the projector writes the row too


async def _record_pending(request: Request, event: Event) -> bool:
    """Writes the task's PENDING row; False when the store failed (logged, never the request's failure)."""
    try:
        await request.app.state.tasks.apply(project(event))
        return True
    except Exception as exc:  # noqa: BLE001 - any driver failure
        log.warning("could not record PENDING for %s: %s", event.task_id, exc)
        return False


async def _accept_once(request: Request, key: str, event: Event, scope: str) -> Event:
    """`_accept` once per Idempotency-Key: returns the event of the key's task, accepted now or by an earlier request
    (the same object as `event` only when this request's task is the one accepted)."""
    keys = request.app.state.idempotency_keys
    assert isinstance(event.payload, Requested)
    request_fingerprint = idempotency.fingerprint(event.payload)
    claim = IdempotencyClaim(event.task_id, event.event_id, request_fingerprint, idempotency.claim_time())
    try:
        existing = await keys.claim(scope, key, claim)
    except Exception as exc:  # noqa: BLE001 - any driver failure: the key cannot be checked, so nothing is accepted
        log.warning("idempotency claim failed: %s", exc)
        raise store_unavailable() from None
    if existing is not None:
        accepted = existing.fingerprint == request_fingerprint and await _has_row(request, existing.task_id)
        decision = idempotency.decide(existing, request_fingerprint, idempotency.claim_time(), accepted=accepted)
        if decision is idempotency.Decision.CONFLICT:
            raise idempotency.conflict_error()
        if decision is idempotency.Decision.IN_FLIGHT:
            raise idempotency.in_flight_error()
        earlier = replace(event, task_id=existing.task_id, event_id=existing.event_id, correlation_id=existing.event_id)
        if decision is idempotency.Decision.REUSE:
            return earlier
        # TAKE_OVER: the first request died before its publish was acknowledged; publish the same task now.
        claim = replace(existing, claimed_at=idempotency.claim_time())
        try:
            taken = await keys.take_over(scope, key, existing, claim.claimed_at)
        except Exception as exc:  # noqa: BLE001 - unknown outcome: the next retry finds the claim and decides again
            log.warning("idempotency take-over failed: %s", exc)
            raise store_unavailable() from None
        if not taken:
            raise idempotency.in_flight_error()
        event = earlier
    try:
        await _accept_published_first(request, event)
    except ApiError:
        try:
            await keys.release(scope, key, claim)  # nothing was accepted: a retry starts afresh
        except Exception as exc:  # noqa: BLE001 - then the claim goes stale and a retry takes it over
            log.warning("could not release idempotency key: %s", exc)
        raise
    return event


async def _has_row(request: Request, task_id: str) -> bool:
    return await _stored_task(request, task_id) is not None


async def _stored_task(request: Request, task_id: str) -> TaskView | None:
    try:
        view: TaskView | None = await request.app.state.tasks.get(task_id)
    except Exception as exc:  # noqa: BLE001 - any driver failure means the store is unavailable
        log.warning("task lookup failed: %s", exc)
        raise store_unavailable() from None
    return view


async def _task(request: Request) -> TaskView:
    caller = await request.app.state.access.caller(request.headers)
    task_id = parse_task_id(request.query_params.get("task_id"))
    view = await _stored_task(request, task_id)
    # Another key's task answers exactly as a missing one, so task ids tell nothing about other clients.
    if view is None or (caller is not None and view.owner != caller.name):
        raise ApiError(404, "TASK_NOT_FOUND", f"no task {task_id}")
    return view


async def _thumbnail(request: Request, view: TaskView, key: str) -> StoredThumbnail:
    assert view.source_sha256
    try:
        stored: StoredThumbnail | None = await request.app.state.thumbnails.find(view.source_sha256, key)
    except Exception as exc:  # noqa: BLE001
        log.warning("thumbnail lookup failed: %s", exc)
        raise ApiError(503, "UNAVAILABLE", "the thumbnail store is unavailable", {"Retry-After": "5"}) from None
    if stored is None:
        raise ApiError(404, "THUMBNAIL_GONE", "the thumbnail of this task is no longer stored")
    return stored


async def _served_thumbnails(request: Request, view: TaskView) -> list[StoredThumbnail]:
    """Each rendition's thumbnail in the encoding served by default, read at once."""
    keys = [r.keys[r.rendered.rendition.served.format] for r in view.renditions]
    return list(await asyncio.gather(*(_thumbnail(request, view, key) for key in keys)))


async def status(request: Request) -> Response:
    wait = parse_wait(request.query_params.get("wait"))
    view = await _task(request)
    if wait:
        view = await _finished_within(request, view, wait)
    return await _status_response(request, view)


async def _status_response(request: Request, view: TaskView, headers: dict[str, str] | None = None) -> Response:
    if view.status is Status.SUCCESS:
        return JSONResponse(status_body(view, await _served_thumbnails(request, view)), 200, headers)
    if view.status is Status.FAILURE:
        return JSONResponse(status_body(view), 200, headers)
    return JSONResponse(status_body(view), 202, {**(headers or {}), "Retry-After": "1"})


async def _finished_within(request: Request, view: TaskView, seconds: float) -> TaskView:
    """The task once it is terminal, or as it is after `seconds`: its row read with the event streams' backoff
    (0.1 s doubling to 2 s), so a waiting request costs a few reads, never a busy loop. Past
    THUMBS_MAX_WAITING requests waiting in this process, it answers at once instead."""
    slots: StreamSlots = request.app.state.wait_slots
    if view.status.terminal or not slots.take():
        return view
    try:
        loop = asyncio.get_running_loop()
        watch = TaskWatch(view.task_id, loop.time(), seconds, jitter=random.random)
        watch.observe(view)
        while (pause := watch.next_wait(loop.time())) is not None:
            await asyncio.sleep(pause)
            try:
                latest = await _stored_task(request, view.task_id)
            except ApiError:
                return view  # the store failed while waiting: the answer as it stood
            if latest is None:
                return view
            watch.observe(latest)
            view = latest
            if view.status.terminal:
                break
        return view
    finally:
        slots.give_back()


async def events(request: Request) -> Response:
    view = await _task(request)  # 400, 401, 403, 404 and 503 as JSON, before any stream opens
    watch = TaskWatch(view.task_id, asyncio.get_running_loop().time(), request.app.state.settings.sse_max_seconds,
                      jitter=random.random)
    return SlotHeldStream(_task_events(request.app.state.tasks, view, watch), request.app.state.stream_slots)


async def _task_events(tasks: Tasks, first: TaskView, watch: TaskWatch) -> AsyncIterator[ServerSentEvent]:
    """Polls the task row, with backoff, until the watch has sent its last event."""
    view: TaskView | None = first
    while True:
        event = watch.observe(view)
        if event is not None:
            yield _sse(event)
        if watch.finished:
            return
        wait = watch.next_wait(asyncio.get_running_loop().time())
        if wait is None:
            yield _sse(watch.timeout())
            return
        await asyncio.sleep(wait)
        try:
            view = await tasks.get(first.task_id)
        except Exception as exc:  # noqa: BLE001 - any driver failure ends the stream with an error event, never a traceback
            log.warning("task lookup failed while streaming %s: %s", first.task_id, exc)
            unavailable = store_unavailable()
            yield _sse(watch.failed(error_body(unavailable.code, unavailable.message)))
            return


def _sse(event: StreamEvent) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(event.data, separators=(",", ":")), event=event.kind, id=str(event.sequence))


class SlotHeldStream(EventSourceResponse):
    """An event stream that holds one of the process's stream slots while it runs, or a 503 when none is free."""

    def __init__(self, content: AsyncIterator[ServerSentEvent], slots: StreamSlots) -> None:
        super().__init__(content, ping=PING_SECONDS)
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._slots.take():
            refused = error_response(503, "TOO_MANY_STREAMS", f"this process already serves {self._slots.limit} event streams, "
                                     "try again shortly or poll GET /thumbnail", {"Retry-After": "5"})
            await refused(scope, receive, send)
            return
        try:
            await super().__call__(scope, receive, send)
        finally:  # however it ends: finished, timed out, client gone, cancelled at shutdown, or a HEAD request
            self._slots.give_back()


async def file(request: Request) -> Response:
    view = await _task(request)
    if view.status is Status.FAILURE:
        code, message = view.error_code or "FAILED", view.error_message or "the task failed"
        return error_response(422, code, message)
    if view.status is not Status.SUCCESS:
        return error_response(202, "IN_PROGRESS", "the thumbnail is not ready yet", {"Retry-After": "1"})
    chosen = view.renditions[parse_rendition_index(request.query_params.get("rendition"), len(view.renditions))]
    fmt = negotiated_format(chosen, request.headers.get("accept", ""))
    key = chosen.keys[fmt]
    # Content-addressed: the bytes of (source content, rendition, renderer version) never change.
    etag = f'"{view.source_sha256}.{key}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if chosen.rendered.rendition.format == AUTO:
        headers["Vary"] = "Accept"  # one URL, several bodies: caches must key on what the client accepts
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    stored = await _thumbnail(request, view, key)
    return Response(stored.data, 200, headers, media_type=stored.content_type)


async def live_stats(request: Request) -> Response:
    await request.app.state.access.caller(request.headers)  # with keys required, only key holders see the volumes
    minutes = stats.parse_minutes(request.query_params.get("minutes"))
    body = await stats.fetch_stats(request.app.state.stats_http, request.app.state.settings.stats_url, minutes)
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})


async def health(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> Response:
    kafka_ok = await asyncio.to_thread(request.app.state.publisher.reachable, 2.0)
    try:
        await asyncio.wait_for(request.app.state.tasks.ping(), 3.0)
        cassandra_ok = True
    except Exception:  # noqa: BLE001 - any failure means not ready
        cassandra_ok = False
    checks = {"kafka": "ok" if kafka_ok else "down", "cassandra": "ok" if cassandra_ok else "down"}
    ok = kafka_ok and cassandra_ok
    READY.set(ok)  # the last probe's answer, for the alert on a process that stays unready
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503)


async def metrics(_request: Request) -> Response:
    if os.environ.get(MULTIPROCESS_DIR):  # several worker processes: every one's figures, summed
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
    return Response(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_request: Request) -> Response:
    return JSONResponse(openapi_spec())


async def docs(_request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


async def page(_request: Request) -> Response:
    return FileResponse(PAGE / "index.html", media_type="text/html; charset=utf-8")


async def on_api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def on_not_found(_request: Request, _exc: Exception) -> Response:
    return error_response(404, "NOT_FOUND", "no such route")


async def on_method_not_allowed(_request: Request, _exc: Exception) -> Response:
    return error_response(405, "METHOD_NOT_ALLOWED", "method not allowed on this route")
