"""The fetcher's memory for source images: downloads reserve their size before reading, and wait while it is spent.

Without it, THUMBS_FETCH_CONCURRENCY downloads (per consumer: fresh and retried requests) of up to
THUMBS_FETCH_MAX_BYTES each could all be in memory at once: 2 × 64 × 20 MiB = 2.5 GiB. A download reserves
its declared Content-Length (or the maximum, when the origin declares none or compresses) in one piece, so
no download ever holds part of the budget while waiting for more: waiting cannot deadlock. Reservations are
granted first come, first served, so a large one is not starved by a stream of small ones.
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from services.common import metrics

Release = Callable[[], None]


class ByteBudget:
    def __init__(self, total: int) -> None:
        self.total = total
        self.reserved = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        metrics.FETCH_RESERVED_BYTES.set_function(lambda: self.reserved)

    async def reserve(self, size: int) -> Release:
        """Waits until `size` bytes (at most the whole budget) are free, takes them, and returns their release."""
        size = max(0, min(size, self.total))
        if not self._waiting and self.reserved + size <= self.total:
            self.reserved += size
        else:
            granted = asyncio.get_running_loop().create_future()
            self._waiting.append((size, granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._give_back(size)  # granted as the wait was cancelled: not taken after all
                else:
                    self._waiting.remove((size, granted))
                    self._grant()  # the next in line may fit now that this one stops waiting
                raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._give_back(size)

        return release

    def _give_back(self, size: int) -> None:
        self.reserved -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self.reserved + self._waiting[0][0] <= self.total:
            size, granted = self._waiting.popleft()
            if not granted.done():
                self.reserved += size
                granted.set_result(None)
