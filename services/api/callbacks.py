"""Callback URLs at the door: refused at POST when webhooks cannot be signed or the host is not one the notifier may
reach. The notifier checks again when it connects (DNS may have changed by then); this is the early, clear answer."""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable

from aiohttp.abc import AbstractResolver

from services.common.errors import ErrorCode, PermanentError, ThumbsError
from services.fetcher.guard import Network, is_forbidden, literal_address, validate_url
from services.fetcher.resolver import GuardedResolver

from .validation import ApiError

log = logging.getLogger(__name__)
LOOKUP_TIMEOUT_S = 2.0


class CallbackCheck:
    """Vets a request's callback URL with the fetcher's address rules and allow list; it looks the host up, never
    connects to it."""

    def __init__(self, *, allow: Iterable[Network], resolver: AbstractResolver, lookup_timeout: float = LOOKUP_TIMEOUT_S) -> None:
        self._lookup_timeout = lookup_timeout
        self._allow = tuple(allow)
        self._resolver = GuardedResolver(resolver, self._allow)

    async def check(self, url: str | None, *, signable: bool) -> None:
        """`signable`: a secret exists to sign this request's webhooks with (the service's, or its API key's)."""
        if url is None:
            return
        if not signable:
            raise ApiError(422, "WEBHOOKS_DISABLED", "this service sends no webhooks (no signing secret is set); leave callback_url out")
        try:
            target = validate_url(url, "callback_url")
        except PermanentError as exc:
            raise ApiError(422, "INVALID_REQUEST", exc.message) from None
        host = target.raw_host or ""
        address = literal_address(host)
        if address is not None:
            if is_forbidden(address, self._allow):
                raise _forbidden()
            return
        try:
            async with asyncio.timeout(self._lookup_timeout):
                await self._resolver.resolve(host, target.port or 0, socket.AF_UNSPEC)
        except PermanentError as exc:
            if exc.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS:
                raise _forbidden() from None
            raise ApiError(422, "CALLBACK_UNRESOLVABLE", f"callback_url's host {host} does not resolve") from None
        except (ThumbsError, TimeoutError) as exc:
            # DNS is slow or failing for now: accept, as the notifier checks the address again before it connects.
            log.warning("callback host %s not checked at POST: %s", host, exc)


def _forbidden() -> ApiError:
    # The address itself stays out of the answer: it may be internal.
    return ApiError(422, "CALLBACK_FORBIDDEN_ADDRESS", "callback_url's host is not a public address")
