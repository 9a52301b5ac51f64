"""The guarded downloader against real HTTP servers on loopback: 127.0.0.2 allowed, 127.0.0.1 forbidden.

Every socket connect in this module goes through `connects`, which records it and refuses any
address outside loopback without dialling, so even a broken guard cannot send traffic elsewhere.
"""
import asyncio
import gzip
import hashlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler

from services.common.errors import ErrorCode, PermanentError, ThumbsError, TransientError
from services.common.settings import Settings
from services.fetcher.download import USER_AGENT, Downloader

ALLOWED = "127.0.0.2"
FORBIDDEN = "127.0.0.1"
MAX_BYTES = 64 * 1024
IMAGE = bytes(range(256)) * 40
SETTINGS = Settings(
    fetch_allow_networks=(ipaddress.ip_network(f"{ALLOWED}/32"),),
    fetch_connect_timeout=1.0,
    fetch_read_timeout=1.5,
    fetch_total_timeout=2.0,
    fetch_max_bytes=MAX_BYTES,
    fetch_max_redirects=5,
)


@pytest.fixture(autouse=True)
def connects(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Addresses this test connected to; non-loopback ones are refused here, never dialled."""
    seen: list[str] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def vet(address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        seen.append(host)
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise ConnectionRefusedError(f"test refused to dial {host}")

    def connect(self: socket.socket, address: Any) -> None:
        vet(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        vet(address)
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    yield seen


class StubResolver(AbstractResolver):
    """DNS as the test says it is; records every lookup."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                          proto=0, flags=socket.AI_NUMERICHOST)
            for a in self.answers[host]
        ]

    async def close(self) -> None:
        pass


class Origin:
    """An image origin with one route per kind of misbehaviour; remembers the paths it served."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.app = web.Application(middlewares=[self._record])
        self.app.add_routes([
            web.get("/ok", self.ok), web.get("/host", self.host), web.get("/chain/{n}", self.chain),
            web.get("/redirect", self.redirect), web.get("/status/{code}", self.status),
            web.get("/slow", self.slow), web.get("/silent", self.silent), web.get("/declared-big", self.declared_big),
            web.get("/endless", self.endless), web.get("/empty", self.empty), web.get("/gzip", self.gzip),
            web.get("/gzip-bomb", self.gzip_bomb), web.get("/brotli", self.brotli),
        ])

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits.append(request.path_qs)
        return await handler(request)

    async def ok(self, request: web.Request) -> web.Response:
        return web.Response(body=IMAGE, content_type="image/png")

    async def host(self, request: web.Request) -> web.Response:
        return web.Response(text=f"{request.host} {request.headers['User-Agent']} {request.headers['Accept-Encoding']}")

    async def chain(self, request: web.Request) -> web.Response:
        left = int(request.match_info["n"])
        if left == 0:
            return await self.ok(request)
        raise web.HTTPFound(f"{left - 1}")  # relative, resolved against the current URL

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    async def _stream(self, request: web.Request, length: int | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if length is None:
            response.enable_chunked_encoding()
        else:
            response.content_length = length
        await response.prepare(request)
        return response

    async def slow(self, request: web.Request) -> web.StreamResponse:
        response = await self._stream(request, 60)
        for _ in range(60):
            await response.write(b"x")
            await asyncio.sleep(1)
        return response

    async def silent(self, request: web.Request) -> web.StreamResponse:
        response = await self._stream(request, 10)
        await asyncio.sleep(30)
        return response

    async def declared_big(self, request: web.Request) -> web.StreamResponse:
        response = await self._stream(request, MAX_BYTES * 100)
        await asyncio.sleep(30)  # never sends the body: refusing must not wait for it
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        response = await self._stream(request, None)
        while True:
            await response.write(b"\0" * 8192)

    async def empty(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/png")

    async def gzip(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(IMAGE), headers={"Content-Encoding": "gzip"})

    async def gzip_bomb(self, request: web.Request) -> web.Response:
        bomb = gzip.compress(b"\0" * (MAX_BYTES * 200))  # ~13 MB inflated from ~13 KB
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip"})

    async def brotli(self, request: web.Request) -> web.Response:
        return web.Response(body=b"\x0b\x02\x80", headers={"Content-Encoding": "br"})


async def _serve(origin: Origin, host: str) -> TestServer:
    server = TestServer(origin.app, host=host, handler_cancellation=True)
    await server.start_server()
    return server


@pytest_asyncio.fixture(scope="module")
async def servers() -> AsyncIterator[tuple[TestServer, Origin, TestServer, Origin]]:
    allowed, forbidden = Origin(), Origin()
    allowed_server, forbidden_server = await _serve(allowed, ALLOWED), await _serve(forbidden, FORBIDDEN)
    yield allowed_server, allowed, forbidden_server, forbidden
    await allowed_server.close()
    await forbidden_server.close()


@pytest.fixture
def ok_port(servers: tuple[TestServer, Origin, TestServer, Origin]) -> int:
    assert servers[0].port is not None
    return servers[0].port


@pytest.fixture
def bad_port(servers: tuple[TestServer, Origin, TestServer, Origin]) -> int:
    assert servers[2].port is not None
    return servers[2].port


@pytest.fixture
def forbidden_origin(servers: tuple[TestServer, Origin, TestServer, Origin]) -> Origin:
    return servers[3]


@pytest_asyncio.fixture
async def downloader() -> AsyncIterator[Downloader]:
    downloader = Downloader(SETTINGS)
    yield downloader
    await downloader.close()


async def _fails(downloader: Downloader, url: str) -> ThumbsError:
    with pytest.raises(ThumbsError) as caught:
        await downloader.fetch(url)
    return caught.value


async def test_fetches_image_with_its_sha256(downloader: Downloader, ok_port: int, connects: list[str]) -> None:
    download = await downloader.fetch(f"http://{ALLOWED}:{ok_port}/ok")
    assert download.data == IMAGE
    assert download.sha256 == hashlib.sha256(IMAGE).hexdigest()
    assert download.final_url == f"http://{ALLOWED}:{ok_port}/ok"
    assert set(connects) == {ALLOWED}


async def test_sends_identity_encoding_and_our_user_agent(downloader: Downloader, ok_port: int) -> None:
    download = await downloader.fetch(f"http://{ALLOWED}:{ok_port}/host")
    assert download.data.decode() == f"{ALLOWED}:{ok_port} {USER_AGENT} identity"


@pytest.mark.parametrize(
    "host",
    [FORBIDDEN, "[::1]", "0.0.0.0", "2130706433", "0x7f000001", "127.1", "0177.0.0.1", "0x7f.1.", "127.0.0.1.",
     "[::ffff:127.0.0.1]", "[::127.0.0.1]", "[64:ff9b::7f00:1]", "[2002:7f00:1::]", "localhost"],
)
async def test_refuses_loopback_in_any_spelling(
    bad_port: int, forbidden_origin: Origin, connects: list[str], host: str
) -> None:
    resolver = StubResolver({"localhost": [FORBIDDEN, "::1"]})  # numeric spellings must never reach it
    downloader = Downloader(SETTINGS, resolver=resolver)
    try:
        error = await _fails(downloader, f"http://{host}:{bad_port}/ok")
    finally:
        await downloader.close()
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS
    assert resolver.calls == (["localhost"] if host == "localhost" else [])
    assert connects == []
    assert forbidden_origin.hits == []


async def test_refuses_localhost_from_the_system_resolver(
    downloader: Downloader, bad_port: int, connects: list[str]
) -> None:
    error = await _fails(downloader, f"http://localhost:{bad_port}/ok")  # answered from /etc/hosts
    assert error.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS
    assert connects == []


async def test_refuses_redirect_to_forbidden_address(
    downloader: Downloader, ok_port: int, bad_port: int, forbidden_origin: Origin, connects: list[str]
) -> None:
    target = f"http://{FORBIDDEN}:{bad_port}/ok"
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/redirect?to={target}")
    assert error.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS
    assert FORBIDDEN not in connects
    assert forbidden_origin.hits == []


async def test_follows_five_redirects(downloader: Downloader, ok_port: int) -> None:
    download = await downloader.fetch(f"http://{ALLOWED}:{ok_port}/chain/5")
    assert download.data == IMAGE
    assert download.final_url == f"http://{ALLOWED}:{ok_port}/chain/0"


async def test_refuses_a_sixth_redirect(downloader: Downloader, ok_port: int) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/chain/6")
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_TOO_MANY_REDIRECTS


@pytest.mark.parametrize(
    "target", ["file:///etc/passwd", "gopher://127.0.0.2:70/_x", "ftp://127.0.0.2/a.png", "http://user:pw@127.0.0.2/"]
)
async def test_refuses_redirect_to_unusable_url(downloader: Downloader, ok_port: int, target: str) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/redirect?to={target}")
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_BAD_REDIRECT


@pytest.mark.parametrize(("code", "kind"), [(404, PermanentError), (403, PermanentError), (410, PermanentError),
                                            (503, TransientError), (500, TransientError), (429, TransientError)])
async def test_http_errors(downloader: Downloader, ok_port: int, code: int, kind: type[ThumbsError]) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/status/{code}")
    assert type(error) is kind
    assert error.code is ErrorCode.SOURCE_HTTP_ERROR
    assert str(code) in error.message


async def test_slow_loris_hits_the_total_timeout(downloader: Downloader, ok_port: int) -> None:
    started = time.monotonic()
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/slow")
    elapsed = time.monotonic() - started
    assert isinstance(error, TransientError)
    assert error.code is ErrorCode.SOURCE_TIMEOUT
    assert SETTINGS.fetch_total_timeout - 0.2 < elapsed < SETTINGS.fetch_total_timeout + 1


async def test_silence_hits_the_read_timeout(downloader: Downloader, ok_port: int) -> None:
    started = time.monotonic()
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/silent")
    assert error.code is ErrorCode.SOURCE_TIMEOUT
    assert time.monotonic() - started < SETTINGS.fetch_total_timeout


async def test_declared_length_over_cap_is_refused_without_reading(downloader: Downloader, ok_port: int) -> None:
    started = time.monotonic()
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/declared-big")
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_TOO_LARGE
    assert time.monotonic() - started < 1  # the origin never sends a body; we did not wait for one


async def test_endless_chunked_body_stops_at_cap(downloader: Downloader, ok_port: int) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/endless")
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_TOO_LARGE


async def test_empty_body(downloader: Downloader, ok_port: int) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/empty")
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_EMPTY


async def test_gzip_body_from_an_origin_that_ignores_identity(downloader: Downloader, ok_port: int) -> None:
    download = await downloader.fetch(f"http://{ALLOWED}:{ok_port}/gzip")
    assert download.data == IMAGE
    assert download.sha256 == hashlib.sha256(IMAGE).hexdigest()


async def test_gzip_bomb_stops_at_cap(downloader: Downloader, ok_port: int) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/gzip-bomb")
    assert error.code is ErrorCode.SOURCE_TOO_LARGE


async def test_unknown_content_encoding(downloader: Downloader, ok_port: int) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/brotli")
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_HTTP_ERROR


async def test_connection_refused_is_transient(downloader: Downloader) -> None:
    with socket.socket() as probe:  # a port on the allowed address that nothing listens on
        probe.bind((ALLOWED, 0))
        port = probe.getsockname()[1]
    error = await _fails(downloader, f"http://{ALLOWED}:{port}/ok")
    assert isinstance(error, TransientError)
    assert error.code is ErrorCode.SOURCE_UNREACHABLE


ANSWERS = {
    "images.test": [ALLOWED],
    "metadata.test": ["169.254.169.254"],
    "internal.test": ["10.0.0.1"],
    "ula.test": ["fd00::1"],
    "mixed.test": [ALLOWED, "10.0.0.1"],  # one bad answer is enough to refuse the name
    "loopback.test": [FORBIDDEN],
}


async def test_stub_resolved_name_is_dialled_at_the_checked_address(ok_port: int, connects: list[str]) -> None:
    resolver = StubResolver(ANSWERS)
    downloader = Downloader(SETTINGS, resolver=resolver)
    try:
        download = await downloader.fetch(f"http://images.test:{ok_port}/host")
    finally:
        await downloader.close()
    assert download.data.decode().startswith(f"images.test:{ok_port} ")  # Host header keeps the name
    assert resolver.calls == ["images.test"]
    assert connects == [ALLOWED]


@pytest.mark.parametrize("name", ["metadata.test", "internal.test", "ula.test", "mixed.test", "loopback.test"])
async def test_name_resolving_to_forbidden_address_is_refused_before_connecting(
    ok_port: int, connects: list[str], name: str
) -> None:
    resolver = StubResolver(ANSWERS)
    downloader = Downloader(SETTINGS, resolver=resolver)
    try:
        error = await _fails(downloader, f"http://{name}:{ok_port}/ok")
    finally:
        await downloader.close()
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS
    assert resolver.calls == [name]
    assert connects == []


async def test_redirect_to_name_resolving_to_metadata_is_refused(ok_port: int, connects: list[str]) -> None:
    resolver = StubResolver(ANSWERS)
    downloader = Downloader(SETTINGS, resolver=resolver)
    try:
        error = await _fails(downloader, f"http://{ALLOWED}:{ok_port}/redirect?to=http://metadata.test/latest/meta-data/")
    finally:
        await downloader.close()
    assert error.code is ErrorCode.SOURCE_FORBIDDEN_ADDRESS
    assert resolver.calls == ["metadata.test"]
    assert set(connects) == {ALLOWED}


async def test_unknown_name_is_unresolvable(connects: list[str]) -> None:
    downloader = Downloader(SETTINGS, resolver=StubResolver(ANSWERS))
    try:
        error = await _fails(downloader, "http://nowhere.test/a.png")
    finally:
        await downloader.close()
    assert isinstance(error, PermanentError)
    assert error.code is ErrorCode.SOURCE_UNRESOLVABLE
    assert connects == []


RAW_RESPONSES = {
    b"/short": b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
    b"/long": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
              b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",  # smuggled answer for the next request
    b"/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood",
}


class RawOrigin:
    """Writes byte-exact responses, for origins whose Content-Length lies; keeps connections open."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while request := await reader.readuntil(b"\r\n\r\n"):
                path = request.split(b" ")[1]
                writer.write(RAW_RESPONSES[path])
                await writer.drain()
                if path == b"/short":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[tuple[RawOrigin, int]]:
    origin = RawOrigin()
    server = await asyncio.start_server(origin.handle, ALLOWED, 0)
    yield origin, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_body_shorter_than_content_length_is_transient(downloader: Downloader, raw: tuple[RawOrigin, int]) -> None:
    error = await _fails(downloader, f"http://{ALLOWED}:{raw[1]}/short")
    assert isinstance(error, TransientError)
    assert error.code is ErrorCode.SOURCE_UNREACHABLE


async def test_connections_are_pooled(downloader: Downloader, raw: tuple[RawOrigin, int]) -> None:
    for _ in range(3):
        assert (await downloader.fetch(f"http://{ALLOWED}:{raw[1]}/ok")).data == b"good"
    assert raw[0].connections == 1


async def test_bytes_past_content_length_do_not_answer_the_next_request(
    downloader: Downloader, raw: tuple[RawOrigin, int]
) -> None:
    first = await downloader.fetch(f"http://{ALLOWED}:{raw[1]}/long")
    second = await downloader.fetch(f"http://{ALLOWED}:{raw[1]}/ok")
    assert first.data == b"hello"  # what Content-Length promised; the image check downstream judges it
    assert second.data == b"good"
    assert raw[0].connections == 2  # the connection with leftover bytes was not reused
