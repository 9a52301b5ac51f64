"""The fetcher's memory in the worst case its settings allow: many large sources that stall before their last byte.

Run from the repository root: `.venv/bin/python bench/fetcher_memory.py [--tasks 96] [--mib 8] [--stall 2]`.

A real fetcher process (its own topics and keyspace on the local servers, or those THUMBS_* names) is given
`--tasks` requests at once; every source is a distinct JPEG of `--mib` MiB that the origin (127.0.0.2) sends
at once except its last byte, which comes `--stall` seconds later. Every download is then in memory together
unless something bounds them. Two runs in one invocation: the default THUMBS_FETCH_MEMORY_BYTES, and, as the
baseline, a budget too large to bind (what the fetcher did before it had one). Printed: the fetcher's peak RSS,
the time until every task was published, and the ratio between the two runs.
"""
from __future__ import annotations

import argparse
import http.server
import os
import sys
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

if __package__ in (None, ""):  # run as a script: make `bench` and `services` importable from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import IMAGE_HOST, server_settings, with_comment
from bench.procstat import rss_kib
from services.common.cassandra import migrate
from services.common.settings import Settings
from services.common.topics import ensure_topics
from tests.integration.stack import Stack, drop_environment, isolated_env, settings_of, wait_for

UNBOUND = 64 * 1024**3  # a budget no run reaches: the baseline


class StallingOrigin:
    """Serves /big/<n>.jpg: a distinct JPEG of the given size, all but its last byte at once, that byte after `stall` s."""

    def __init__(self, size: int, stall: float) -> None:
        filler = os.urandom(size)  # compressed data that no decoder needs to read: only the fetcher's memory matters
        base = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + filler[: size - 22] + b"\xff\xd9"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = with_comment(base, self.path.encode())
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:-1])
                self.wfile.flush()
                time.sleep(stall)
                self.wfile.write(body[-1:])

            def log_message(self, *_args: object) -> None:
                pass

        http.server.ThreadingHTTPServer.request_queue_size = 256
        self._server = http.server.ThreadingHTTPServer((IMAGE_HOST, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base = f"http://{IMAGE_HOST}:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def metric(stack: Stack, name: str, label: str = "") -> float:
    """A fetcher metric summed over the series whose labels contain `label`; -1 before it serves."""
    port = stack.settings.fetcher_metrics_port
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#") and label in line)


def run(servers: Settings, origin: StallingOrigin, tasks: int, budget: int, state: Path) -> tuple[float, float, int, int]:
    """(peak fetcher RSS in MiB, seconds until every task was published, images published, tasks failed)."""
    import asyncio
    import uuid

    from services.common.kafka import KafkaPublisher
    from services.common.model import Event, Requested

    env = isolated_env(servers.kafka_bootstrap, (servers.cassandra_hosts, servers.cassandra_port), state,
                       FETCH_MEMORY_BYTES=str(budget), FETCH_TOTAL_TIMEOUT="120")
    settings = settings_of(env)
    ensure_topics(settings)
    migrate(settings)
    stack = Stack(env, names=("fetcher",))
    stack.start()
    try:
        wait_for(lambda: metric(stack, "thumbs_stage_ready") == 1, 90, lambda: stack.log_tail("fetcher"))
        pid = stack.processes["fetcher"].pid
        publisher = KafkaPublisher(settings)

        async def produce() -> None:
            await asyncio.gather(*(publisher.publish_event(Event(str(uuid.uuid4()), Requested(f"{origin.base}/big/{n}.jpg"), "bench"))
                                   for n in range(tasks)))

        started = time.monotonic()
        asyncio.run(produce())
        publisher.close()
        peak, fetched, failed = 0.0, 0.0, 0.0
        deadline = started + 600
        while time.monotonic() < deadline and fetched + failed < tasks:
            peak = max(peak, (rss_kib(pid) or 0) / 1024)
            fetched = metric(stack, "thumbs_events_out_total", 'type="thumbnail.fetched"')
            failed = metric(stack, "thumbs_events_out_total", 'type="thumbnail.failed"')
            time.sleep(0.05)
        return peak, time.monotonic() - started, int(fetched), int(failed)
    finally:
        stack.stop()
        drop_environment(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=96)
    parser.add_argument("--mib", type=int, default=8, help="size of each source")
    parser.add_argument("--stall", type=float, default=2.0, help="seconds before each source's last byte")
    args = parser.parse_args()
    servers, where = server_settings()
    print(f"servers: {where}; {args.tasks} sources of {args.mib} MiB, each stalling {args.stall:.1f} s before its last byte")
    origin = StallingOrigin(args.mib * 1024**2, args.stall)
    budget = Settings().fetch_memory_bytes
    results = {}
    try:
        with TemporaryDirectory() as tmp:
            for label, bytes_ in (("budget (default)", budget), ("no budget (baseline)", UNBOUND)):
                results[label] = run(servers, origin, args.tasks, bytes_, Path(tmp) / label.split()[0])
    finally:
        origin.close()
    print(f"\n{'run':24} {'budget':>12} {'peak RSS':>10} {'all done in':>13} {'published':>10} {'failed':>7}")
    for (label, (peak, seconds, done, failed)), bytes_ in zip(results.items(), (budget, UNBOUND), strict=True):
        shown = f"{bytes_ / 1024**2:.0f} MiB" if bytes_ < UNBOUND else "unbound"
        print(f"{label:24} {shown:>12} {peak:>8.0f} MiB {seconds:>11.1f} s {done:>10} {failed:>7}")
    bounded, baseline = results["budget (default)"], results["no budget (baseline)"]
    print(f"\npeak RSS, budget / baseline: {bounded[0] / baseline[0]:.2f}×; time: {bounded[1] / baseline[1]:.2f}×")


if __name__ == "__main__":
    main()
