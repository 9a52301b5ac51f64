"""Child processes that render, each fed through a pipe of its own and answering through a socket.

Why not a ProcessPoolExecutor: when one of its processes dies, every call still pending fails with it — so
one image that crashes the decoder (or a process killed for its memory) failed every other image in flight
as corrupt, up to a dozen innocent tasks. Here each process answers its requests in the order they were
sent, so the one it was working on when it died is known: that request fails, the others go to its
replacement. Handing an image over is a write from the event loop into a pipe sized to hold it, with no
feeder and manager threads contending for the busy resizer's interpreter lock.

Frames: a request is (header length, data length), the pickled header (the job's arguments), then the
data bytes as they are; a reply is its length, then the pickled ("ok", value) or ("error", exception).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REQUEST = struct.Struct(">II")  # header length, data length
REPLY = struct.Struct(">I")
QUICK_DEATH_S = 1.0  # a process that dies sooner than this after its start is replaced only after this long
PIPE_BYTES = 4 * 1024 * 1024  # wanted: a few source images, so the child reads on while the resizer is busy
Job = Callable[[bytes, Any], Any]  # module-level, so a spawned process can import it


class ProcessDied(Exception):
    """The process rendering this request died before it answered."""


def _receive(pipe: io.FileIO, size: int) -> bytes | None:
    """Exactly `size` bytes; None when the writer closed before the first of them."""
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = pipe.readinto(view[got:])
        if not n:
            if got == 0:
                return None
            raise EOFError("the request was cut short")
        got += n
    return bytes(buffer)


def serve(requests: Connection, replies: socket.socket, job: Job, initializer: Callable[[], None] | None) -> None:
    """A child process's loop: one request at a time, until the parent closes the request pipe."""
    # Its parent decides when it ends (by closing the pipe); a Ctrl-C reaches the whole process group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    with requests, replies, io.FileIO(requests.fileno(), "rb", closefd=False) as pipe:
        while (head := _receive(pipe, REQUEST.size)) is not None:
            header_size, data_size = REQUEST.unpack(head)
            header = pickle.loads(_receive(pipe, header_size) or b"")
            data = _receive(pipe, data_size) or b""
            try:
                reply = pickle.dumps(("ok", job(data, header)), pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - the caller's to handle, as a call in-process would be
                try:
                    reply = pickle.dumps(("error", exc), pickle.HIGHEST_PROTOCOL)
                except Exception:  # noqa: BLE001 - an exception that does not pickle still has a message
                    reply = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))
            replies.sendall(REPLY.pack(len(reply)) + reply)


def _enlarge(pipe_fd: int) -> None:
    """As large as PIPE_BYTES or the system allows an unprivileged process (fs.pipe-max-size, 1 MiB by default)."""
    try:
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        limit = 1024 * 1024
    try:
        fcntl.fcntl(pipe_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), min(PIPE_BYTES, limit))
    except OSError:
        pass  # the default 64 KiB still works, in more turns of the event loop


class _Writable(asyncio.Protocol):
    """The request pipe's flow control: writers wait while the transport's buffer is over its high mark."""

    def __init__(self) -> None:
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.can_write.set()


@dataclass
class _Request:
    frame: bytes
    data: bytes
    answer: asyncio.Future[Any]


class RenderProcess:
    """One child process; started at once, connected on first use inside the running event loop."""

    def __init__(self, job: Job, initializer: Callable[[], None] | None = None) -> None:
        self._job, self._initializer = job, initializer
        self._waiting: deque[_Request] = deque()  # sent, not answered, oldest first: the child's order
        self._ready: asyncio.Event | None = None
        self._requests: asyncio.WriteTransport | None = None
        self._reply_writer: asyncio.StreamWriter | None = None
        self._flow = _Writable()
        self._replies: asyncio.Task[None] | None = None
        self._closing = False
        self._calls = 0  # from the moment a caller picks this process, so concurrent callers spread out
        self.restarts = 0
        self._start()

    @property
    def in_flight(self) -> int:
        return self._calls

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _start(self) -> None:
        self._started_at = time.monotonic()
        read_end, write_end = os.pipe()
        _enlarge(write_end)
        self._request_pipe = os.fdopen(write_end, "wb", buffering=0)
        self._reply_socket, child_socket = socket.socketpair()
        child_pipe = Connection(read_end, writable=False)
        # Spawned, not forked: the resizer runs Kafka and Cassandra client threads that a fork would copy
        # in whatever state they were in.
        context = multiprocessing.get_context("spawn")
        self._process = context.Process(target=serve, args=(child_pipe, child_socket, self._job, self._initializer),
                                        daemon=True)
        self._process.start()
        child_pipe.close()
        child_socket.close()

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._flow = _Writable()
        transport, _ = await loop.connect_write_pipe(lambda: self._flow, self._request_pipe)
        self._requests = transport
        reader, self._reply_writer = await asyncio.open_unix_connection(sock=self._reply_socket)
        self._replies = asyncio.create_task(self._read_replies(reader))

    async def __call__(self, data: bytes, header: Any) -> Any:
        self._calls += 1
        try:
            return await self._call(data, header)
        finally:
            self._calls -= 1

    async def _call(self, data: bytes, header: Any) -> Any:
        if self._ready is None:
            self._ready = asyncio.Event()
            await self._connect()
            self._ready.set()
        await self._ready.wait()
        if self._closing:
            raise RuntimeError("the render processes are closed")
        head = pickle.dumps(header, pickle.HIGHEST_PROTOCOL)
        request = _Request(REQUEST.pack(len(head), len(data)) + head, data, asyncio.get_running_loop().create_future())
        self._send(request)
        await self._flow.can_write.wait()
        return await request.answer

    def _send(self, request: _Request) -> None:
        assert self._requests is not None
        self._waiting.append(request)
        # Two writes, no await between them: frames of concurrent callers never interleave.
        self._requests.write(request.frame)
        self._requests.write(request.data)

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                size = REPLY.unpack(await reader.readexactly(REPLY.size))[0]
                payload = await reader.readexactly(size)
                request = self._waiting.popleft()
                try:
                    outcome, value = pickle.loads(payload)
                except Exception as exc:  # noqa: BLE001 - e.g. an exception class the parent cannot rebuild
                    outcome, value = "error", RuntimeError(f"the render process's reply is unreadable: {exc}")
                if request.answer.done():
                    continue
                if outcome == "ok":
                    request.answer.set_result(value)
                else:
                    request.answer.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the process ended
        except Exception:  # a reply nobody waits for: the channel cannot be trusted any more
            log.exception("render process %s: unexpected reply; replacing it", self._process.pid)
        if not self._closing:
            await self._replace()

    async def _replace(self) -> None:
        """The child died: its current request fails, the others go to a new child in the same order."""
        assert self._ready is not None
        self._ready.clear()
        await self._end(1.0)  # its end of the socket closed as it exited: it is gone or nearly
        log.warning("render process %s ended with %s; starting another", self._process.pid, self._process.exitcode)
        unanswered = list(self._waiting)
        self._waiting.clear()
        if unanswered and not unanswered[0].answer.done():
            unanswered[0].answer.set_exception(ProcessDied(f"exit code {self._process.exitcode}"))
        # Already torn down by the loop when the child's end went away, or about to be: either way, let go.
        with contextlib.suppress(Exception):
            if self._requests is not None:
                self._requests.abort()
        with contextlib.suppress(Exception):
            if self._reply_writer is not None:
                self._reply_writer.close()
        self.restarts += 1
        if time.monotonic() - self._started_at < QUICK_DEATH_S:
            await asyncio.sleep(QUICK_DEATH_S)  # one that cannot even start is not restarted in a tight loop
        if self._closing:
            _fail(unanswered[1:], "closed")
            return
        self._start()
        await self._connect()
        for request in unanswered[1:]:
            self._send(request)
        self._ready.set()

    async def close(self) -> None:
        """Lets the child answer what it has, then ends it (killed if it has not ended within 10 s)."""
        self._closing = True
        if self._ready is not None:
            self._ready.set()  # callers waiting for a replacement are told it is closed
        if self._requests is not None:
            self._requests.close()  # after what is buffered: the child reads to the end, answers, and returns
        else:
            self._request_pipe.close()
        await self._end(10.0)
        if self._replies is not None:
            await asyncio.wait([self._replies], timeout=1)
            self._replies.cancel()
        if self._reply_writer is not None:
            self._reply_writer.close()
        self._reply_socket.close()
        _fail(self._waiting, "closed")

    async def _end(self, grace_s: float) -> None:
        """Waits up to `grace_s` for the child to exit, without blocking the event loop; then kills it."""
        deadline = time.monotonic() + grace_s
        while self._process.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._process.is_alive():
            self._process.kill()
        self._process.join(1)


def _fail(requests: Iterable[_Request], reason: str) -> None:
    for request in requests:
        if not request.answer.done():
            request.answer.set_exception(ProcessDied(reason))


class RenderProcesses:
    """`count` processes; each call goes to the one with the fewest calls under way."""

    def __init__(self, job: Job, count: int, initializer: Callable[[], None] | None = None) -> None:
        self.processes = [RenderProcess(job, initializer) for _ in range(max(1, count))]

    async def __call__(self, data: bytes, header: Any) -> Any:
        return await min(self.processes, key=lambda p: p.in_flight)(data, header)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.processes))
