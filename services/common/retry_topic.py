"""Another attempt through a retry topic: the attempt and not-before headers, the backoff between attempts, the wait."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .backoff import backoff_seconds

ATTEMPT_HEADER = "thumbs-attempt"
NOT_BEFORE_HEADER = "thumbs-not-before"  # epoch milliseconds
MAX_RETRY_WAIT_S = 600.0  # a corrupt not-before header must not park a partition for longer


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    base_seconds: float = 1.0
    cap_seconds: float = 300.0

    def delay(self, attempt: int, jitter: float) -> float:
        return backoff_seconds(attempt, base=self.base_seconds, cap=self.cap_seconds, jitter=jitter)

    def next_attempt(self, attempt: int, now: float, jitter: float) -> tuple[tuple[str, bytes], ...]:
        """The headers of attempt `attempt + 1`: its number, and when it may start after `now` (Unix seconds)."""
        not_before = int((now + self.delay(attempt, jitter)) * 1000)
        return (ATTEMPT_HEADER, str(attempt + 1).encode()), (NOT_BEFORE_HEADER, str(not_before).encode())


def attempt_of(headers: Mapping[str, bytes]) -> int:
    try:
        return max(1, int(headers.get(ATTEMPT_HEADER, b"1")))
    except ValueError:
        return 1


def wait_seconds(headers: Mapping[str, bytes], now: float) -> float:
    """How long a retried record still has to wait at `now` (Unix seconds); 0 without a readable header."""
    try:
        not_before = int(headers.get(NOT_BEFORE_HEADER, b"0")) / 1000
    except ValueError:
        return 0.0
    return min(MAX_RETRY_WAIT_S, max(0.0, not_before - now))
