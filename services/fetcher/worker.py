"""Fetcher process: consumers of thumbnail.requested and of its retry topic, around the fetcher core."""
from __future__ import annotations

import asyncio
import time
from typing import Mapping

from services.common import metrics, stage
from services.common.cassandra import TRANSIENT_ERRORS, connect
from services.common.kafka import RETRY, KafkaPublisher
from services.common.model import REQUESTED, Event, Outgoing
from services.common.repositories import ThumbnailRepository
from services.common.settings import Settings

from .core import NOT_BEFORE_HEADER, STAGE, RetryPolicy, handle_requested
from .download import Downloader

MAX_RETRY_WAIT_S = 600.0  # a corrupt not-before header must not park a partition for longer


def build_fetcher(settings: Settings, *, publisher: KafkaPublisher | None = None) -> tuple[list[stage.Subscription], Downloader]:
    publisher = publisher or KafkaPublisher(settings)
    downloader = Downloader(settings)
    thumbnails = ThumbnailRepository(connect(settings), settings.keyspace)
    version = settings.renderer_version
    policy = RetryPolicy(settings.fetch_max_attempts, settings.fetch_retry_base_seconds)

    async def fresh(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        return await handle_requested(event, headers, downloader, policy, thumbnails, version)

    async def retried(event: Event, headers: Mapping[str, bytes]) -> list[Outgoing]:
        await asyncio.sleep(_wait_seconds(headers))
        return await handle_requested(event, headers, downloader, policy, thumbnails, version)

    # Retries wait out their delay in a slot of their own member, so they never hold up fresh requests.
    concurrency = settings.fetch_concurrency
    subscriptions = [
        stage.Subscription(settings, stage.StageRunner(STAGE, settings, publisher, fresh, transient=TRANSIENT_ERRORS),
                           [settings.topic(REQUESTED)], concurrency=concurrency),
        stage.Subscription(settings, stage.StageRunner(STAGE, settings, publisher, retried, transient=TRANSIENT_ERRORS),
                           [settings.topic(RETRY)], concurrency=concurrency),
    ]
    return subscriptions, downloader


def _wait_seconds(headers: Mapping[str, bytes]) -> float:
    try:
        not_before = int(headers.get(NOT_BEFORE_HEADER, b"0")) / 1000
    except ValueError:
        return 0.0
    return min(MAX_RETRY_WAIT_S, max(0.0, not_before - time.time()))


def main(settings: Settings) -> int:
    metrics.serve(settings.metrics_host, settings.fetcher_metrics_port)
    subscriptions, downloader = build_fetcher(settings)
    return stage.run(subscriptions, on_stop=[downloader.close])
