"""Background rounds of the API process (reading the backlog, sharing request counts): run every so often until
cancelled, a failing round logged once per outage rather than once a round."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress

log = logging.getLogger(__name__)


async def every(interval_s: float, step: Callable[[], Awaitable[None]], failing_means: str) -> None:
    """Awaits `step` every `interval_s` until cancelled; `failing_means` tells the log what a failure costs."""
    failing = False
    while True:
        try:
            await step()
        except Exception as exc:  # noqa: BLE001 - any failure: the next round tries again
            if not failing:
                log.warning("%s: %s", failing_means, exc)
            failing = True
        else:
            if failing:
                log.info("recovered: %s no longer", failing_means)
            failing = False
        await asyncio.sleep(interval_s)


async def cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
