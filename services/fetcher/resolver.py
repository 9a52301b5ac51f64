"""Name resolution that only ever hands aiohttp addresses the guard has allowed, and the sessions built on it."""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.typedefs import LooseHeaders
from yarl import URL

from services.common.errors import ErrorCode, PermanentError, TransientError

from .guard import Network, is_forbidden, literal_address

FORBIDDEN_MESSAGE = "source host is not a public address"  # the address itself stays out: it may be internal


class GuardedResolver(AbstractResolver):
    """Resolves through `inner`, then refuses the host if ANY of its addresses is forbidden.

    aiohttp connects only to the addresses this returns, so the address checked is the address
    dialled: there is no second lookup a rebinding DNS server could answer differently. Refusing
    on any forbidden answer (rather than dropping those answers) keeps a name that mixes public
    and internal records from being useful for probing.
    """

    def __init__(self, inner: AbstractResolver, allow: Iterable[Network]) -> None:
        self._inner = inner
        self._allow = tuple(allow)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            results = await self._inner.resolve(host, port, family)
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise TransientError(ErrorCode.SOURCE_UNREACHABLE, f"DNS lookup of {host} failed for now") from None
            raise PermanentError(ErrorCode.SOURCE_UNRESOLVABLE, f"{host} does not resolve") from None
        except OSError:
            raise PermanentError(ErrorCode.SOURCE_UNRESOLVABLE, f"{host} does not resolve") from None
        if not results:
            raise PermanentError(ErrorCode.SOURCE_UNRESOLVABLE, f"{host} has no addresses")
        if any(self._refuses(result["host"]) for result in results):
            raise PermanentError(ErrorCode.SOURCE_FORBIDDEN_ADDRESS, FORBIDDEN_MESSAGE)
        return results

    def _refuses(self, host: str) -> bool:
        try:
            return is_forbidden(ipaddress.ip_address(host), self._allow)
        except ValueError:  # not an address at all: fail closed
            return True

    async def close(self) -> None:
        await self._inner.close()


def check_literal(url: URL, allow: Iterable[Network]) -> None:
    """Refuse an IP-literal host up front: aiohttp dials literals without asking the resolver."""
    address = literal_address(url.raw_host or "")
    if address is not None and is_forbidden(address, allow):
        raise PermanentError(ErrorCode.SOURCE_FORBIDDEN_ADDRESS, FORBIDDEN_MESSAGE)


def guarded_session(allow: Iterable[Network], inner: AbstractResolver | None, timeout: aiohttp.ClientTimeout,
                    headers: LooseHeaders) -> tuple[aiohttp.ClientSession, GuardedResolver]:
    """A session for outbound requests on users' behalf (source images, webhooks) and its resolver, which the
    caller closes after the session. Create it inside the running loop that will own its connections."""
    resolver = GuardedResolver(inner or aiohttp.ThreadedResolver(), allow)
    # No DNS cache: each new connection gets a fresh lookup and a fresh check. No connection limit here:
    # the stage's concurrency already bounds the requests in flight.
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, limit=0)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=headers,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every user: no cookies carried between them
        trust_env=False,  # a proxy from the environment would dial for us, past the guard
    )
    return session, resolver
