"""Backpressure's edge: the task feeding the fetchers' lag into a Backlog every second, and the 503 it answers with."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from confluent_kafka.admin import AdminClient

from services.common.kafka import client_config
from services.common.metrics import BACKLOG_RECORDS, BACKPRESSURE_REJECTIONS
from services.common.model import REQUESTED
from services.common.settings import Settings
from services.ops.kafka import position

from . import periodic
from .backpressure import Backlog
from .validation import ApiError

log = logging.getLogger(__name__)
INTERVAL_S = 1.0

LagReader = Callable[[], tuple[int, int]]
"""A blocking read of (records not yet consumed, the group's positions summed over the partitions)."""


def refuse_when_full(backlog: Backlog) -> None:
    """Raises the 503 a client sees while the backlog is over its limit, and counts it."""
    wait = backlog.admit()
    if wait is not None:
        BACKPRESSURE_REJECTIONS.inc()
        raise ApiError(503, "BACKLOG_FULL", f"the pipeline is more than {backlog.max_backlog} requests behind, "
                       f"try again in {wait} s", {"Retry-After": str(wait)})


async def watch(backlog: Backlog, read: LagReader, interval_s: float = INTERVAL_S,
                clock: Callable[[], float] = time.monotonic) -> None:
    """Samples the lag until cancelled; a failed reading records nothing, so the samples age and admission fails open."""

    async def sample() -> None:
        lag, consumed = await asyncio.to_thread(read)  # the admin client blocks
        backlog.record(clock(), lag, consumed)
        BACKLOG_RECORDS.set(lag)

    await periodic.every(interval_s, sample, "cannot read the fetchers' backlog, accepting every request")


def start_watching(backlog: Backlog, settings: Settings, read: LagReader | None) -> asyncio.Task[None] | None:
    """The sampling task, when the limit is on; `read` defaults to the Kafka reader."""
    if backlog.max_backlog <= 0:
        return None
    return asyncio.create_task(watch(backlog, read or fetcher_lag_reader(settings)), name="backlog-watch")


def fetcher_lag_reader(settings: Settings) -> LagReader:
    """Reads the fetchers' lag on thumbnail.requested, with one admin client for every reading.

    The retry topic is left out: its records wait there on purpose (backoff), which says nothing of the fetchers' pace.
    """
    admin = AdminClient(client_config(settings))
    group, topic = settings.group("fetcher"), settings.topic(REQUESTED)

    def read() -> tuple[int, int]:
        fetchers = position(admin, group, [topic])
        # log end - lag is where the group reads next (its commit, or the earliest retained offset): it
        # grows by the records consumed, whatever the producers do meanwhile.
        return fetchers.total, sum(p.log_end - p.lag for p in fetchers.partitions)

    return read
