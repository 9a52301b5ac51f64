"""Admission by backlog: from samples of the fetcher's lag, whether to accept a request or how long to ask it to wait."""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

WINDOW_S = 30.0  # the drain rate is measured over this much recent history
STALE_AFTER_S = 10.0  # a newest sample older than this says nothing about the pipeline any more
RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S = 1, 60
DRAIN_TARGET = 0.5  # Retry-After aims at the backlog falling to this fraction of the limit, not just under it


@dataclass(frozen=True)
class Sample:
    """One reading: when (monotonic seconds), records not yet consumed, and the consumer's summed offsets."""

    at: float
    lag: int
    consumed: int


class Backlog:
    """Answers `admit()` from the samples `record()` is fed; a `max_backlog` of 0 or less accepts everything."""

    def __init__(self, max_backlog: int, *, clock: Callable[[], float] = time.monotonic,
                 window_s: float = WINDOW_S, stale_after_s: float = STALE_AFTER_S) -> None:
        self.max_backlog = max_backlog
        self._clock, self._window_s, self._stale_after_s = clock, window_s, stale_after_s
        self._samples: deque[Sample] = deque()

    def record(self, at: float, lag: int, consumed: int) -> None:
        self._samples.append(Sample(at, lag, consumed))
        while self._samples[0].at < at - self._window_s:
            self._samples.popleft()

    def admit(self) -> int | None:
        """None to accept; otherwise the seconds a client should wait before retrying."""
        if self.max_backlog <= 0 or not self._samples:
            return None
        newest = self._samples[-1]
        if self._clock() - newest.at > self._stale_after_s:
            # Fail open: when the lag cannot be read (Kafka's admin API unreachable), the publish tells the
            # client itself if Kafka is down, and a broken reading must not turn away a healthy pipeline's work.
            return None
        if newest.lag <= self.max_backlog:
            return None
        rate = self.drain_rate()
        if rate <= 0:
            # Nothing drained within the window (a stopped or crashed fetcher): no estimate to give, so the
            # longest wait, rather than inviting clients back every second to a queue that does not move.
            return RETRY_AFTER_MAX_S
        wait = math.ceil((newest.lag - self.max_backlog * DRAIN_TARGET) / rate)
        return max(RETRY_AFTER_MIN_S, min(RETRY_AFTER_MAX_S, wait))

    def drain_rate(self) -> float:
        """Records consumed per second between the oldest and the newest sample of the window (0 if unknown)."""
        if len(self._samples) < 2:
            return 0.0
        oldest, newest = self._samples[0], self._samples[-1]
        span = newest.at - oldest.at
        if span <= 0:
            return 0.0
        # Never negative: offsets going back (a rewound group, a recreated topic) are no drain.
        return max(0.0, (newest.consumed - oldest.consumed) / span)
