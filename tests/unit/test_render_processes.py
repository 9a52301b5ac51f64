"""Render processes: replies reach their callers, errors come back as they were raised, and a process that
dies fails only the request it was working on (its other requests go to its replacement)."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from services.common.errors import ErrorCode, PermanentError
from services.resizer.processes import ProcessDied, RenderProcess, RenderProcesses
from tests.unit.render_jobs import cannot_start, echo


async def test_each_caller_gets_its_own_reply() -> None:
    processes = RenderProcesses(echo, 2)
    try:
        replies = await asyncio.gather(*(processes(bytes(n), n) for n in range(60)))
        assert [(size, header) for size, header, _pid in replies] == [(n, n) for n in range(60)]
        assert {pid for *_, pid in replies} == {p.pid for p in processes.processes}  # both took work
    finally:
        await processes.close()


async def test_large_data_travels_whole() -> None:
    process = RenderProcess(echo)
    try:
        data = os.urandom(20 * 1024 * 1024)
        assert (await process(data, "big"))[:2] == (len(data), "big")
    finally:
        await process.close()


async def test_errors_come_back_as_raised() -> None:
    process = RenderProcess(echo)
    try:
        with pytest.raises(PermanentError) as raised:
            await process(b"x", "corrupt")
        assert (raised.value.code, raised.value.message) == (ErrorCode.IMAGE_CORRUPT, "bad bytes")
        with pytest.raises(RuntimeError, match="Unpicklable: it says why"):
            await process(b"x", "unpicklable")
        assert (await process(b"abc", "after"))[:2] == (3, "after")
        assert process.restarts == 0
    finally:
        await process.close()


async def test_a_crash_fails_only_the_request_that_caused_it() -> None:
    process = RenderProcess(echo)
    try:
        first_pid = (await process(b"", "connected"))[2]
        # Once connected, calls are sent in the order they start and answered in that order: "slow" first,
        # then the crash, then the rest.
        calls = [asyncio.ensure_future(process(b"a", "slow")), asyncio.ensure_future(process(b"b", "crash"))]
        calls += [asyncio.ensure_future(process(bytes(n), n)) for n in range(5)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results[0][:2] == (1, "slow") and results[0][2] == first_pid
        assert isinstance(results[1], ProcessDied) and "exit code 3" in str(results[1])
        assert [r[:2] for r in results[2:]] == [(n, n) for n in range(5)]
        assert {r[2] for r in results[2:]} == {process.pid} != {first_pid}  # the replacement answered them
        assert process.restarts == 1
    finally:
        await process.close()


async def test_a_process_killed_between_requests_is_replaced() -> None:
    process = RenderProcess(echo)
    try:
        await process(b"", "first")
        dead = process.pid
        assert dead is not None
        os.kill(dead, 9)
        for _ in range(50):  # the reply reader notices the end of the socket and starts another
            if process.restarts:
                break
            await asyncio.sleep(0.1)
        assert process.restarts == 1
        assert (await process(b"xy", "again"))[:2] == (2, "again")
    finally:
        await process.close()


async def test_close_lets_the_process_finish_and_exit() -> None:
    process = RenderProcess(echo)
    slow = asyncio.ensure_future(process(b"", "slow"))
    await asyncio.sleep(0.05)
    await process.close()
    assert (await slow)[:2] == (0, "slow")  # answered before the process ended
    assert process._process.exitcode == 0
    with pytest.raises(RuntimeError, match="closed"):
        await process(b"", "late")


def test_the_same_under_uvloop_as_the_stages_run() -> None:
    import uvloop

    async def crash_among_others() -> list[object]:
        processes = RenderProcesses(echo, 1)
        try:
            await processes(b"", "connected")
            calls = [asyncio.ensure_future(processes(b"b", "crash"))]
            calls += [asyncio.ensure_future(processes(os.urandom(300_000), n)) for n in range(4)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await processes.close()

    results = uvloop.run(crash_among_others())
    assert isinstance(results[0], ProcessDied)
    assert [r[:2] for r in results[1:]] == [(300_000, n) for n in range(4)]  # type: ignore[index]


async def test_a_process_that_cannot_start_is_not_restarted_in_a_tight_loop() -> None:
    process = RenderProcess(echo, initializer=cannot_start)
    started = time.monotonic()
    try:
        with pytest.raises(ProcessDied):
            await process(b"", "never answered")
        await asyncio.sleep(2.5)
        assert 1 <= process.restarts <= 4  # at most one restart a second (the first waits out the quick death)
    finally:
        await process.close()
    assert time.monotonic() - started < 15
