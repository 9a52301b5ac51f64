"""Resizer process: a consumer of thumbnail.fetched; Pillow work runs in child processes (one by default:
run one resizer per core, the Kafka way, rather than one resizer feeding several)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial

from services.common import stage
from services.common.allocator import keep_freed_memory
from services.common.cassandra import TRANSIENT_ERRORS, connect, hosts_up
from services.common.cpu import usable_cores
from services.common.errors import ErrorCode, PermanentError
from services.common.health import Check
from services.common.kafka import KafkaPublisher
from services.common.model import FETCHED, Event, Outgoing, Rendition, StoredThumbnail
from services.common.ports import Thumbnails
from services.common.repositories import ThumbnailRepository
from services.common.settings import Settings

from .core import STAGE, Render, handle_fetched
from .processes import ProcessDied, RenderProcesses
from .recent import RecentThumbnails, fetcher_lookup_holds
from .render import prepare_render_process, render_job


def pool_size(settings: Settings) -> int:
    return settings.resizer_workers or usable_cores()


class ProcessRenderer:
    """Renders in child processes, so decoding never blocks the event loop and an image that crashes the
    decoder fails alone: the process is replaced and the other images in flight go to the new one."""

    def __init__(self, settings: Settings) -> None:
        job = partial(render_job, max_pixels=settings.max_pixels, max_frames=settings.max_frames)
        self._processes = RenderProcesses(job, pool_size(settings), initializer=prepare_render_process)

    async def close(self) -> None:
        await self._processes.close()

    async def __call__(self, data: bytes, renditions: Sequence[Rendition]) -> list[StoredThumbnail]:
        try:
            result: list[StoredThumbnail] = await self._processes(data, list(renditions))
        except ProcessDied:
            raise PermanentError(ErrorCode.IMAGE_CORRUPT, "the image crashed the decoder") from None
        return result


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


def build_resizer(settings: Settings, *, publisher: stage.Publisher | None = None, thumbnails: Thumbnails | None = None,
                  render: Render | None = None) -> stage.Built:
    """The resizer with real adapters for every port not given; it closes only what it opened."""
    closers: list[stage.Close] = []
    checks: dict[str, Check] = {}
    if publisher is None:
        publisher = kafka = KafkaPublisher(settings)
        closers.append(kafka.close)
    if thumbnails is None:
        session = connect(settings)
        thumbnails = ThumbnailRepository(session, settings.keyspace)
        closers.append(session.cluster.shutdown)
        checks["cassandra"] = partial(hosts_up, session)
    if render is None:
        render = pool = ProcessRenderer(settings)
        closers.append(pool.close)
    locks = KeyedLocks()
    recent = RecentThumbnails(thumbnails)
    member: list[stage.Subscription] = []  # set below: when it took its partitions decides what memory can answer

    async def handle(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        holds = fetcher_lookup_holds(event, headers, member[0].assigned_at, time.time())
        lookup = recent.known if holds else recent.read_through
        async with locks.hold(event.key.decode()):
            return await handle_fetched(event, headers, lookup, render, settings.renderer_version)

    runner = stage.StageRunner(STAGE, settings, publisher, handle, transient=TRANSIENT_ERRORS)
    # Twelve records per render process: while one renders, the others wait on their Cassandra and Kafka round
    # trips (a thumbnail write took 26-37 ms under the FullHD bench's load). 600 distinct FullHD, alternating:
    # 41.4 and 44.0 tasks/s with 4 per worker, 59.1 and 57.5 with 12. The byte bound keeps large sources from
    # multiplying the memory that takes.
    member.append(stage.Subscription(settings, runner, [settings.topic(FETCHED)], concurrency=pool_size(settings) * 12,
                                     max_bytes=settings.resizer_in_flight_bytes))
    return stage.Built(member[:], closers, checks)


def main(settings: Settings) -> int:
    keep_freed_memory()  # every record's value is a source image
    return stage.run(build_resizer(settings), settings, settings.resizer_metrics_port)
