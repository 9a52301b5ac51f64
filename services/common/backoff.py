"""The project's one backoff rule: exponential, capped, jittered. Pure arithmetic, safe at any attempt."""
from __future__ import annotations

# Past 2**64 the base is far beyond any cap, and float arithmetic would overflow near 2**1024.
_MAX_EXPONENT = 64


def backoff_seconds(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """The wait before attempt `attempt + 1`: base · 2^(attempt-1), at most `cap`, then spread ±50 %.

    `jitter` is uniform in [0, 1); 0.5 gives the undisturbed value. Spreading keeps a crowd of callers
    that failed together (a broker restart) from retrying in lockstep, also once every one is at the cap.
    """
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    return min(cap, base * 2.0**exponent) * (0.5 + jitter)
