"""Fetcher process: consumers of thumbnail.requested and of its retry topic, around the fetcher core."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from functools import partial

from services.common import stage
from services.common.allocator import keep_freed_memory
from services.common.cassandra import TRANSIENT_ERRORS, connect, hosts_up
from services.common.health import Check
from services.common.kafka import KafkaPublisher
from services.common.model import REQUESTED, RETRY, Event, Outgoing
from services.common.ports import Thumbnails
from services.common.repositories import ThumbnailRepository
from services.common.retry_topic import RetryPolicy, wait_seconds
from services.common.settings import Settings

from .core import STAGE, Source, handle_requested
from .download import Downloader


def build_fetcher(settings: Settings, *, publisher: stage.Publisher | None = None, source: Source | None = None,
                  thumbnails: Thumbnails | None = None) -> stage.Built:
    """The fetcher with real adapters for every port not given; it closes only what it opened."""
    closers: list[stage.Close] = []
    checks: dict[str, Check] = {}
    if source is None:
        source = downloader = Downloader(settings)
        closers.append(downloader.close)
    if publisher is None:
        publisher = kafka = KafkaPublisher(settings)
        closers.append(kafka.close)
    if thumbnails is None:
        session = connect(settings)
        thumbnails = ThumbnailRepository(session, settings.keyspace)
        closers.append(session.cluster.shutdown)
        checks["cassandra"] = partial(hosts_up, session)
    version = settings.renderer_version
    policy = RetryPolicy(settings.fetch_max_attempts, settings.fetch_retry_base_seconds)

    async def fresh(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        return await handle_requested(event, headers, source, policy, thumbnails, version)

    async def retried(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        await asyncio.sleep(wait_seconds(headers, time.time()))
        return await handle_requested(event, headers, source, policy, thumbnails, version)

    # Retries wait out their delay in a slot of their own member, so they never hold up fresh requests.
    concurrency = settings.fetch_concurrency
    subscriptions = [
        stage.Subscription(settings, stage.StageRunner(STAGE, settings, publisher, fresh, transient=TRANSIENT_ERRORS),
                           [settings.topic(REQUESTED)], concurrency=concurrency),
        stage.Subscription(settings, stage.StageRunner(STAGE, settings, publisher, retried, transient=TRANSIENT_ERRORS),
                           [settings.topic(RETRY)], concurrency=concurrency),
    ]
    return stage.Built(subscriptions, closers, checks)


def main(settings: Settings) -> int:
    keep_freed_memory()  # every download is a source image
    return stage.run(build_fetcher(settings), settings, settings.fetcher_metrics_port)
