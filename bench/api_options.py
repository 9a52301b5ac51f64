"""What the optional request features cost POST /thumbnail: an Idempotency-Key, and an API key (THUMBS_AUTH=required,
its rate check included), against plain POSTs measured in the same run.

Run from the repository root: `python bench/api_options.py [--posts N] [--rounds R] [--clients C]`. Two API processes
run against the local Kafka and Cassandra (started if needed), each in an environment of its own and with no stage
running, so that only the API's path is measured: one open, one requiring keys. Each round sends N POSTs per
variant, the variants interleaved; figures are medians over rounds, ratios against plain POSTs.
"""
from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `services` importable from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.harness import server_settings
from services.api import keys
from services.common.cassandra import connect, migrate
from services.common.model import ApiKey
from services.common.repositories import ApiKeyRepository
from services.common.settings import Settings
from services.common.topics import ensure_topics
from tests.integration.stack import Stack, drop_environment, isolated_env

SOURCE = "http://127.0.0.2:1/bench.jpg"  # never fetched: no stage runs


async def _posts(api: str, n: int, clients: int, headers_for: object) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of n POSTs from `clients` concurrent clients."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            async with session.post(f"{api}/thumbnail", json={"source_image_url": f"{SOURCE}?{i}"},
                                    headers=headers_for(i)) as response:  # type: ignore[operator]
                await response.read()
                if response.status != 202:
                    raise RuntimeError(f"POST answered {response.status}: {await response.text()}")
            latencies.append((time.perf_counter() - started) * 1000)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients), timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return n / (time.perf_counter() - started), latencies


def _key(settings: Settings) -> str:
    """A key whose rate never binds, so that the check runs but never refuses."""
    presented, digest = keys.new_key("bench")
    session = connect(settings)
    try:
        record = ApiKey("bench", digest, 10**9, secrets.token_hex(32), datetime.now(UTC))
        asyncio.run(ApiKeyRepository(session, settings.keyspace).create(record))
    finally:
        session.cluster.shutdown()
    return presented


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    servers, where = server_settings()
    print(f"servers: {where}; {args.posts} POSTs x {args.rounds} rounds per variant, {args.clients} clients")
    contact = (servers.cassandra_hosts, servers.cassandra_port)
    stacks: list[Stack] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for name, extra in (("open", {}), ("keyed", {"AUTH": "required"})):
                stack = Stack(isolated_env(servers.kafka_bootstrap, contact, Path(tmp) / name, **extra), ("api",))
                ensure_topics(stack.settings)
                migrate(stack.settings)
                stack.start()
                stack.wait_ready()
                stacks.append(stack)
            open_api, keyed = stacks
            bearer = {"Authorization": f"Bearer {_key(keyed.settings)}"}
            run_id = uuid.uuid4().hex[:8]
            variants = {
                "plain": (open_api.api, lambda i: {}),
                "Idempotency-Key": (open_api.api, lambda i: {"Idempotency-Key": f"{run_id}-{i}"}),
                "API key": (keyed.api, lambda i: bearer),
            }
            for api, headers_for in variants.values():  # warm up: connections, prepared statements, caches
                asyncio.run(_posts(api, 200, args.clients, headers_for))
            rates: dict[str, list[float]] = {name: [] for name in variants}
            p50: dict[str, list[float]] = {name: [] for name in variants}
            p99: dict[str, list[float]] = {name: [] for name in variants}
            for round_number in range(args.rounds):
                for name, (api, headers_for) in variants.items():
                    # Each round's keys are new: an idempotent retry would measure the replay path instead.
                    prefix = f"{run_id}-{round_number}"
                    headers = (lambda i, p=prefix: {"Idempotency-Key": f"{p}-{i}"}) if name == "Idempotency-Key" else headers_for
                    rate, latencies = asyncio.run(_posts(api, args.posts, args.clients, headers))
                    quantiles = statistics.quantiles(latencies, n=100)
                    rates[name].append(rate)
                    p50[name].append(quantiles[49])
                    p99[name].append(quantiles[98])
            base = statistics.median(rates["plain"])
            print(f"{'variant':<16} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}   (medians of {args.rounds} rounds)")
            for name in variants:
                rate = statistics.median(rates[name])
                print(f"{name:<16} {rate:>8.0f} {rate / base:>5.2f}x {statistics.median(p50[name]):>7.1f} "
                      f"{statistics.median(p99[name]):>7.1f}")
        finally:
            for stack in stacks:
                stack.stop()
                drop_environment(stack.settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
