"""Guarded HTTP downloads of source images: every hop checked, bounded in time and in size."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver
from yarl import URL

from services.common import metrics, stage
from services.common.errors import ErrorCode, PermanentError, ThumbsError, TransientError
from services.common.settings import Settings

from .body import read_capped
from .budget import ByteBudget
from .guard import validate_url
from .resolver import GuardedResolver, check_literal, guarded_session

log = logging.getLogger(__name__)

USER_AGENT = "thumbs-fetcher/0.1"
HEADERS = {
    hdrs.USER_AGENT: USER_AGENT,
    hdrs.ACCEPT: "image/*,*/*;q=0.5",
    hdrs.ACCEPT_ENCODING: "identity",  # a compressed body could be a bomb; see body.py for origins that ignore this
}
REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class Download:
    data: bytes
    sha256: str
    final_url: str


class Downloader:
    """The fetcher's `Source`: downloads over one pooled session that can only reach allowed addresses."""

    def __init__(self, settings: Settings, *, resolver: AbstractResolver | None = None, budget: ByteBudget | None = None) -> None:
        self._settings = settings
        self._budget = budget or ByteBudget(settings.fetch_memory_bytes)
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

    async def fetch(self, url: str) -> Download:
        """Download `url`; every failure is a PermanentError or TransientError with a stable code."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            download = await self._fetch(url)
        except ThumbsError as exc:
            outcome = exc.code.value
            raise
        finally:
            metrics.DOWNLOAD_SECONDS.labels(outcome).observe(time.perf_counter() - started)
        metrics.DOWNLOAD_BYTES.observe(len(download.data))
        return download

    async def _fetch(self, url: str) -> Download:
        try:
            async with asyncio.timeout(self._settings.fetch_total_timeout):
                return await self._follow(validate_url(url))
        except ThumbsError:
            raise
        except TimeoutError:  # the total budget, and aiohttp's connect and read-silence timeouts
            raise TransientError(ErrorCode.SOURCE_TIMEOUT, "origin did not deliver the image in time") from None
        except aiohttp.InvalidURL as exc:
            raise PermanentError(ErrorCode.INVALID_REQUEST, f"source URL is not usable: {exc}") from None
        except aiohttp.ClientPayloadError:
            # The body ended before its Content-Length (or chunking) said it would. A cut connection
            # looks exactly like this, so it is worth another attempt rather than a permanent failure.
            raise TransientError(ErrorCode.SOURCE_UNREACHABLE, "origin's response ended early") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransientError(ErrorCode.SOURCE_UNREACHABLE, f"origin not reachable ({type(exc).__name__})") from None
        except Exception as exc:
            # The fetcher's contract is coded errors only; log the surprise so it is not lost in a retry.
            log.exception("unexpected error fetching %s", url)
            raise TransientError(ErrorCode.SOURCE_UNREACHABLE, f"unexpected {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:  # a connector does not close a resolver it was given
            await self._resolver.close()
            self._resolver = None

    async def _follow(self, url: URL) -> Download:
        session = self._session_for()
        allow = self._settings.fetch_allow_networks
        for _ in range(self._settings.fetch_max_redirects + 1):
            check_literal(url, allow)
            async with session.get(url, allow_redirects=False) as response:
                location = response.headers.get(hdrs.LOCATION)
                if response.status in REDIRECTS and location:
                    url = _redirect_target(url, location)
                    continue
                _check_status(response.status)
                release = await self._budget.reserve(self._size_to_reserve(response))
                # Held until the image is published (or the task parked); released here outside a stage.
                handed_over = stage.hold_until_handled(release)
                try:
                    data, sha256 = await read_capped(response, self._settings.fetch_max_bytes)
                finally:
                    if not handed_over:
                        release()
                return Download(data, sha256, str(url))
        raise PermanentError(
            ErrorCode.SOURCE_TOO_MANY_REDIRECTS, f"more than {self._settings.fetch_max_redirects} redirects"
        )

    def _size_to_reserve(self, response: aiohttp.ClientResponse) -> int:
        """What the body may take in memory: its declared length, unless undeclared or compressed (then the cap)."""
        declared = response.content_length
        encoded = response.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower() not in ("", "identity")
        if declared is not None and declared > self._settings.fetch_max_bytes:
            return 0  # refused before a byte is read
        if declared is None or encoded:
            return self._settings.fetch_max_bytes
        return declared

    def _session_for(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running loop that will own its connections.
        if self._session is None or self._session.closed:
            s = self._settings
            timeout = aiohttp.ClientTimeout(total=None, connect=s.fetch_connect_timeout, sock_read=s.fetch_read_timeout)
            self._session, self._resolver = guarded_session(s.fetch_allow_networks, self._inner_resolver, timeout, HEADERS)
        return self._session


def _redirect_target(current: URL, location: str) -> URL:
    """The next hop, held to the same rules as a submitted URL (the address is checked when dialled)."""
    try:
        return validate_url(str(current.join(URL(location))))
    except (ValueError, PermanentError) as exc:
        reason = exc.message if isinstance(exc, PermanentError) else str(exc)
        raise PermanentError(ErrorCode.SOURCE_BAD_REDIRECT, f"origin redirected to an unusable URL: {reason}") from None


def _check_status(status: int) -> None:
    if 200 <= status < 300:
        return
    message = f"origin answered HTTP {status}"
    if status == 429 or status >= 500:
        raise TransientError(ErrorCode.SOURCE_HTTP_ERROR, message)
    raise PermanentError(ErrorCode.SOURCE_HTTP_ERROR, message)
