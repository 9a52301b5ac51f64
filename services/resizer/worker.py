"""Resizer process: a Faust agent on thumbnail.fetched; Pillow work runs in a process pool (one per core)."""
from __future__ import annotations

import asyncio
import os
from contextlib import asynccontextmanager
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import AsyncIterator, Mapping

import faust

from services.common import metrics, stage
from services.common.cassandra import connect
from services.common.errors import ErrorCode, PermanentError
from services.common.events import FETCHED, Event, Outgoing, Rendition
from services.common.kafka import KafkaPublisher
from services.common.repositories import StoredThumbnail, ThumbnailRepository
from services.common.settings import Settings

from .core import STAGE, handle_fetched
from .imaging import make_thumbnail


def render_in_worker(data: bytes, rendition: Rendition, max_pixels: int, max_frames: int) -> StoredThumbnail:
    thumbnail = make_thumbnail(data, rendition, max_pixels=max_pixels, max_frames=max_frames)
    return StoredThumbnail(thumbnail.content_type, thumbnail.width, thumbnail.height, len(thumbnail.data), thumbnail.data)


class ProcessRenderer:
    """Renders in worker processes, so decoding never blocks the event loop and every core is used."""

    def __init__(self, settings: Settings) -> None:
        self._workers = settings.resizer_workers or os.cpu_count() or 1
        self._limits = (settings.max_pixels, settings.max_frames)
        self._pool = ProcessPoolExecutor(self._workers)

    @property
    def workers(self) -> int:
        return self._workers

    async def __call__(self, data: bytes, rendition: Rendition) -> StoredThumbnail:
        job = partial(render_in_worker, data, rendition, *self._limits)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
        except BrokenProcessPool:
            # A decoder crashed its process: fail this image, replace the pool, keep the stage serving.
            self._pool = ProcessPoolExecutor(self._workers)
            raise PermanentError(ErrorCode.IMAGE_CORRUPT, "the image crashed the decoder") from None


class KeyedLocks:
    """Serialises work per key within this process (equal content is routed to one partition, hence one process)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


def build_resizer(settings: Settings, *, publisher: KafkaPublisher | None = None) -> faust.App:
    app = stage.build_app(settings, STAGE)
    publisher = publisher or KafkaPublisher(settings)
    thumbnails = ThumbnailRepository(connect(settings), settings.keyspace)
    render = ProcessRenderer(settings)
    locks = KeyedLocks()

    async def handle(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        async with locks.hold(event.key.decode()):
            return await handle_fetched(event, headers, thumbnails, render, settings.renderer_version)

    runner = stage.StageRunner(STAGE, settings, publisher, handle)
    stage.attach(app, runner, [settings.topic(FETCHED)], concurrency=render.workers * 2)
    return app


def main(settings: Settings) -> None:
    metrics.serve(settings.api_host, settings.resizer_metrics_port)
    stage.run(build_resizer(settings))
