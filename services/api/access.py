"""Who is calling and whether they may: API keys checked against Cassandra (cached briefly), and per-key rates shared
across API processes (services/api/quota.py) through Cassandra."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Protocol

from cachetools import TTLCache

from services.common.model import ApiKey

from . import keys, periodic
from .quota import Admission, Quotas
from .validation import ApiError

log = logging.getLogger(__name__)
# A revoked key keeps working for at most this long on a process that looked it up just before.
CACHE_SECONDS = 5.0
CACHE_SIZE = 10_000  # bounds memory under a flood of made-up key names, which are cached as unknown too
SYNC_SECONDS = 0.5


class KeyStore(Protocol):
    async def get(self, name: str) -> ApiKey | None: ...

    async def report_usage(self, name: str, minute: int, process: str, requests: int) -> int: ...


class Access:
    def __init__(self, store: KeyStore | None, *, required: bool, clock: Callable[[], float] = time.time) -> None:
        if required and store is None:
            raise ValueError("API keys are required but no key store was given")
        self.required = required
        self._store = store
        self._clock = clock
        self._records: TTLCache[str, ApiKey | None] = TTLCache(CACHE_SIZE, CACHE_SECONDS)
        self._quotas = Quotas()
        self._syncing: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._process = uuid.uuid4().hex  # this process's row in api_key_usage

    async def caller(self, headers: Mapping[str, str]) -> ApiKey | None:
        """The calling key when keys are required (else None); a 401 or 403 when it may not call."""
        if not self.required:
            return None
        presented = keys.bearer(headers.get("authorization"))
        if presented is None:
            raise ApiError(401, "UNAUTHENTICATED", "send an API key: Authorization: Bearer <key>",
                           {"WWW-Authenticate": 'Bearer realm="thumbs"'})
        name = keys.name_of(presented)
        record = await self._record(name) if name else None
        verdict = keys.verify(presented, record)
        if verdict is keys.Verdict.UNKNOWN:
            raise ApiError(401, "INVALID_API_KEY", "this API key is not valid",
                           {"WWW-Authenticate": 'Bearer realm="thumbs", error="invalid_token"'})
        if verdict is keys.Verdict.REVOKED:
            raise ApiError(403, "API_KEY_REVOKED", "this API key was revoked")
        return record

    async def admit(self, key: ApiKey) -> Admission:
        """Counts one request against the key's rate; a 429 with the rate's headers when it is used up."""
        limit = key.requests_per_minute
        if self._quotas.unreported(key.name, limit, self._clock()):
            async with self._syncing[key.name]:  # one round trip per key at a time; the others wait for its answer
                if self._quotas.unreported(key.name, limit, self._clock()):
                    try:
                        await self._sync(key.name)
                    except Exception as exc:  # noqa: BLE001 - decide from what is known; the background retries
                        log.warning("cannot share request counts of %s: %s", key.name, exc)
        admission = self._quotas.admit(key.name, limit, self._clock())
        if not admission.admitted:
            raise ApiError(429, "RATE_LIMITED", f"over this key's {key.requests_per_minute} requests per minute; "
                           f"retry in {admission.retry_after_s} s", admission.headers())
        return admission

    async def sync(self) -> None:
        """One round: writes this process's counts, reads back every process's."""
        await self._sync(None)

    async def _sync(self, name: str | None) -> None:
        assert self._store is not None
        for report in self._quotas.reports(self._clock(), name):
            total = await self._store.report_usage(report.name, report.window, self._process, report.own)
            self._quotas.synced(report, total)

    async def _record(self, name: str) -> ApiKey | None:
        if name in self._records:
            return self._records[name]
        assert self._store is not None  # required implies a store
        try:
            record = await self._store.get(name)
        except Exception as exc:  # noqa: BLE001 - any driver failure: no one can be authenticated right now
            log.warning("API key lookup failed: %s", exc)
            raise ApiError(503, "UNAVAILABLE", "the key store is unavailable, try again shortly",
                           {"Retry-After": "5"}) from None
        self._records[name] = record
        return record


async def keep_synced(access: Access, interval_s: float = SYNC_SECONDS) -> None:
    """Shares the request counts until cancelled; while it cannot, each process decides from its own counts and
    the others' last known ones."""
    await periodic.every(interval_s, access.sync, "cannot share request counts, deciding from the last known ones")
