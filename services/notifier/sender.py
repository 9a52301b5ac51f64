"""Webhook deliveries over HTTP: the fetcher's guard on every connection, bounded in time, no redirects followed."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping

import aiohttp
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver

from services.common.errors import ErrorCode, PermanentError, TransientError
from services.common.settings import Settings
from services.fetcher.guard import validate_url
from services.fetcher.resolver import GuardedResolver, check_literal, guarded_session

from .core import Answer

USER_AGENT = "thumbs-notifier/0.1"
HEADERS = {hdrs.USER_AGENT: USER_AGENT, hdrs.ACCEPT_ENCODING: "identity"}
# Of a receiver's answer, this much is read and dropped: a short body leaves the connection reusable, and a
# long one costs nothing more than a closed connection.
ANSWER_BYTES = 4096
PERMANENT = frozenset({ErrorCode.SOURCE_FORBIDDEN_ADDRESS, ErrorCode.INVALID_REQUEST})


class WebhookSender:
    """The notifier's `Receiver`: POSTs over one pooled session that can only reach allowed addresses."""

    def __init__(self, settings: Settings, *, resolver: AbstractResolver | None = None) -> None:
        self._settings = settings
        self._inner_resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """The receiver's status; every failure to get one is an Answer without status, never an exception."""
        try:
            target = validate_url(url, "callback_url")
            check_literal(target, self._settings.fetch_allow_networks)  # aiohttp dials literals without the resolver
            # A redirect is not followed: its status is the answer, and not a 2xx one.
            async with self._session_for().post(target, data=body, headers=headers, allow_redirects=False) as response:
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):  # the status is in; the rest is courtesy
                    await response.content.read(ANSWER_BYTES)
                return Answer(response.status)
        except PermanentError as exc:
            forbidden = exc.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS  # the guard's own words are about sources
            reason = "callback_url's host is not a public address" if forbidden else exc.message
            return Answer(None, permanent=exc.code in PERMANENT, reason=reason)
        except TransientError as exc:
            return Answer(None, reason=exc.message)
        except TimeoutError:
            return Answer(None, reason=f"no answer within {self._settings.webhook_timeout_seconds:g} s")
        except aiohttp.InvalidURL as exc:
            return Answer(None, permanent=True, reason=f"callback_url is not usable: {exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return Answer(None, reason=f"receiver not reachable ({type(exc).__name__})")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:  # a connector does not close a resolver it was given
            await self._resolver.close()
            self._resolver = None

    def _session_for(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self._settings
            timeout = aiohttp.ClientTimeout(total=s.webhook_timeout_seconds,
                                            connect=min(s.fetch_connect_timeout, s.webhook_timeout_seconds))
            self._session, self._resolver = guarded_session(s.fetch_allow_networks, self._inner_resolver, timeout, HEADERS)
        return self._session
