"""GET /stats: the stats stage's answer (services/stats), passed through; 503 when it does not answer.

The API holds no statistics itself: they live in the stats stage's Faust tables, and any instance of that
stage answers (forwarding to the one that holds the tables). If none answers, only /stats says so.
"""
from __future__ import annotations

import aiohttp

from .validation import ApiError

TIMEOUT_S = 3.0
MAX_MINUTES = 60  # the stats stage keeps an hour of windows


def parse_minutes(raw: str | None) -> int:
    if raw is None:
        return MAX_MINUTES
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_MINUTES:
        raise ApiError(400, "INVALID_PARAMETER", f"minutes must be a whole number from 1 to {MAX_MINUTES}")
    return int(raw)


async def fetch_stats(http: aiohttp.ClientSession, base_url: str, minutes: int) -> bytes:
    unavailable = ApiError(503, "STATS_UNAVAILABLE", "the stats stage is not answering; the rest of the API is unaffected",
                           {"Retry-After": "10"})
    try:
        async with http.get(f"{base_url.rstrip('/')}/stats", params={"minutes": str(minutes)},
                            timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as answer:
            if answer.status != 200:
                raise unavailable
            return await answer.read()
    except (TimeoutError, aiohttp.ClientError):
        raise unavailable from None
