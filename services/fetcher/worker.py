"""Fetcher process: Faust agents on thumbnail.requested and its retry topic, around the fetcher core."""
from __future__ import annotations

import asyncio
import time
from typing import Mapping

import faust

from services.common import metrics, stage
from services.common.cassandra import connect
from services.common.events import REQUESTED, Event, Outgoing
from services.common.kafka import RETRY, KafkaPublisher
from services.common.repositories import ThumbnailRepository
from services.common.settings import Settings

from .core import NOT_BEFORE_HEADER, STAGE, RetryPolicy, handle_requested
from .download import Downloader

MAX_RETRY_WAIT_S = 600.0  # a corrupt not-before header must not park a partition for longer


def build_fetcher(settings: Settings, *, publisher: KafkaPublisher | None = None) -> faust.App:
    app = stage.build_app(settings, STAGE)
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

    concurrency = settings.fetch_concurrency
    stage.attach(app, stage.StageRunner(STAGE, settings, publisher, fresh), [settings.topic(REQUESTED)], concurrency=concurrency)
    retry_runner = stage.StageRunner(STAGE, settings, publisher, retried)
    stage.attach(app, retry_runner, [settings.topic(RETRY)], concurrency=concurrency, name="fetcher-retry")
    return app


def _wait_seconds(headers: Mapping[str, bytes]) -> float:
    try:
        not_before = int(headers.get(NOT_BEFORE_HEADER, b"0")) / 1000
    except ValueError:
        return 0.0
    return min(MAX_RETRY_WAIT_S, max(0.0, not_before - time.time()))


def main(settings: Settings) -> None:
    metrics.serve(settings.api_host, settings.fetcher_metrics_port)
    stage.run(build_fetcher(settings))
