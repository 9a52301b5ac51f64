"""What an open GET /thumbnail/events stream costs the API process: CPU time and task-row reads per stream per
second, against the same process idle with no stream, measured in the same run.

Run from the repository root: `python bench/sse_streams.py [--streams N] [--seconds T]`. One API process runs
against the local Kafka and Cassandra (started if needed), in an environment of its own and with no stage
running, so every task stays PENDING and its stream stays open, polling its row. The process is measured idle for
T seconds, then while it holds N streams for T seconds (counted from the moment every stream had its first event,
so the polls' ramp from 0.1 s to 2 s is inside the window). CPU time is read from /proc, reads from the API's own
`thumbs_cassandra_request_seconds_count{operation="task_read"}`.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `services` importable from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.harness import server_settings
from bench.procstat import cpu_seconds
from services.common.cassandra import migrate
from services.common.topics import ensure_topics
from tests.integration.stack import Stack, drop_environment, isolated_env

SOURCE = "http://127.0.0.2:1/bench.jpg"  # never fetched: no stage runs
TASK_READS = 'thumbs_cassandra_request_seconds_count{operation="task_read"'


async def _task_reads(session: aiohttp.ClientSession, api: str) -> float:
    async with session.get(f"{api}/metrics") as response:
        text = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(TASK_READS))


async def _create_tasks(session: aiohttp.ClientSession, api: str, n: int) -> list[str]:
    async def post(i: int) -> str:
        async with session.post(f"{api}/thumbnail", json={"source_image_url": f"{SOURCE}?{i}"}) as response:
            if response.status != 202:
                raise RuntimeError(f"POST answered {response.status}: {await response.text()}")
            return str((await response.json())["task_id"])

    return list(await asyncio.gather(*(post(i) for i in range(n))))


async def _hold(session: aiohttp.ClientSession, api: str, task_id: str, opened: asyncio.Event, counter: list[int],
                total: int) -> int:
    """Holds one stream open until cancelled; returns the events it got (a PENDING task sends one)."""
    events = 0
    async with session.get(f"{api}/thumbnail/events", params={"task_id": task_id}) as response:
        if response.status != 200:
            raise RuntimeError(f"stream answered {response.status}: {await response.text()}")
        async for line in response.content:
            if line.startswith(b"event:"):
                events += 1
                if events == 1:
                    counter[0] += 1
                    if counter[0] == total:
                        opened.set()
    return events


async def _measure(api: str, pid: int, streams: int, seconds: float) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)  # a ping comes every 15 s
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        task_ids = await _create_tasks(session, api, streams)
        await asyncio.sleep(2)  # let the POSTs' work settle before the idle baseline

        reads, cpu = await _task_reads(session, api), cpu_seconds(pid)
        await asyncio.sleep(seconds)
        idle = {"reads": await _task_reads(session, api) - reads, "cpu": (cpu_seconds(pid) or 0) - (cpu or 0)}

        opened, counter = asyncio.Event(), [0]
        holders = [asyncio.create_task(_hold(session, api, task_id, opened, counter, streams)) for task_id in task_ids]
        try:
            await asyncio.wait_for(opened.wait(), 60)
            reads, cpu = await _task_reads(session, api), cpu_seconds(pid)
            await asyncio.sleep(seconds)
            held = {"reads": await _task_reads(session, api) - reads, "cpu": (cpu_seconds(pid) or 0) - (cpu or 0)}
            ended = [h for h in holders if h.done()]
            if ended:
                raise RuntimeError(f"{len(ended)} streams ended early: {[h.exception() or h.result() for h in ended[:3]]}")
        finally:
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
    return {"idle_cpu": idle["cpu"], "idle_reads": idle["reads"], "held_cpu": held["cpu"], "held_reads": held["reads"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    servers, where = server_settings()
    print(f"servers: {where}; {args.streams} streams held {args.seconds:g} s, against the same API idle for {args.seconds:g} s")
    contact = (servers.cassandra_hosts, servers.cassandra_port)
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(isolated_env(servers.kafka_bootstrap, contact, Path(tmp) / "sse"), ("api",))
        try:
            ensure_topics(stack.settings)
            migrate(stack.settings)
            stack.start()
            stack.wait_ready()
            started = time.perf_counter()
            figures = asyncio.run(_measure(stack.api, stack.processes["api"].pid, args.streams, args.seconds))
        finally:
            stack.stop()
            drop_environment(stack.settings)
    n, t = args.streams, args.seconds
    extra_cpu_ms = (figures["held_cpu"] - figures["idle_cpu"]) * 1000
    extra_reads = figures["held_reads"] - figures["idle_reads"]
    print(f"{'':<22} {'CPU ms/s':>9} {'reads/s':>8}")
    print(f"{'idle, no stream':<22} {figures['idle_cpu'] * 1000 / t:>9.1f} {figures['idle_reads'] / t:>8.1f}")
    print(f"{f'{n} streams open':<22} {figures['held_cpu'] * 1000 / t:>9.1f} {figures['held_reads'] / t:>8.1f}")
    print(f"per stream, over idle: {extra_cpu_ms / n / t:.3f} CPU ms/s, {extra_reads / n / t:.3f} reads/s "
          f"(run {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
