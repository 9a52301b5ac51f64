"""Chaos run: SIGKILL and restart each process of the pipeline mid-load, then count what was lost.

    .venv/bin/python bench/chaos.py [--tasks 1000] [--rate 25]

Submits distinct images at a steady rate from a loopback image server (127.0.0.2) while, in turn,
the fetcher, resizer, projector, stats stage, API, Kafka broker and Cassandra node are killed with SIGKILL
and restarted. A supervisor restarts stage processes that exit on their own, as `thumbs run` does.
Afterwards it waits for the pipeline to drain and prints: accepted, SUCCESS, FAILURE, lost (accepted
but never terminal), images rendered more than once, HTTP 5xx other than 503, and per fault the time until a
fresh task completes again; and whether the live statistics (GET /stats) counted every record on the
requested, completed and failed topics exactly once. Bounded in count and time; traffic stays on loopback.
"""
from __future__ import annotations

import argparse
import io
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.cassandra import migrate
from services.common.events import decode
from services.common.model import COMPLETED, FAILED, REQUESTED, Completed
from services.common.settings import Settings
from services.common.topics import ensure_topics
from tests.integration.stack import (
    ImageServer,
    Stack,
    completed_events,
    drop_environment,
    isolated_env,
    read_topic,
    settings_of,
)
from thumbs_devtools.lifecycle import all_servers, ensure_running, start_servers
from thumbs_devtools.process import running_pid

FAULTS = ("fetcher", "resizer", "projector", "stats", "api", "kafka", "cassandra")
TERMINAL = ("SUCCESS", "FAILURE")


def distinct_jpeg(index: int, base: bytes) -> bytes:
    """The same pixels with a unique JPEG comment: a distinct sha256 at identical decode cost."""
    comment = f"chaos-{index}".encode()
    return base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:]


def base_image() -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").resize((640, 480)).convert("RGB").save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass
class Ledger:
    accepted: dict[str, float] = field(default_factory=dict)
    refused: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, status: int, task_id: str | None) -> None:
        with self.lock:
            if status == 202 and task_id:
                self.accepted[task_id] = time.monotonic()
            else:
                self.refused[status] = self.refused.get(status, 0) + 1


class Load(threading.Thread):
    """Submits `total` tasks at `rate` per second over distinct URLs; never blocks on a slow API."""

    def __init__(self, api: str, urls: list[str], rate: float, ledger: Ledger) -> None:
        super().__init__(daemon=True)
        self.api, self.urls, self.rate, self.ledger = api, urls, rate, ledger
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.api, timeout=10) as client:
            started = time.monotonic()
            for index, url in enumerate(self.urls):
                time.sleep(max(0.0, started + index / self.rate - time.monotonic()))
                try:
                    response = client.post("/thumbnail", json={"source_image_url": url})
                    task_id = response.json().get("task_id") if response.status_code == 202 else None
                    self.ledger.note(response.status_code, task_id)
                except httpx.HTTPError:
                    with self.ledger.lock:
                        self.ledger.errors += 1  # connection refused while the API is down: not accepted
        self.done.set()


class Supervisor(threading.Thread):
    """Restarts a stage process that exited by itself (as `thumbs run` does); counts restarts."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack, self.restarts, self.stopped = stack, 0, threading.Event()
        self.paused: set[str] = set()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            for name in self.stack.names:
                process = self.stack.processes.get(name)
                if name not in self.paused and process is not None and process.poll() is not None:
                    self.stack.processes.pop(name, None)
                    self.stack.start(name)
                    self.restarts += 1


def kill_stage(stack: Stack, supervisor: Supervisor, name: str) -> None:
    supervisor.paused.add(name)
    stack.stop(name, kill=True)
    time.sleep(2.0)
    stack.start(name)
    supervisor.paused.discard(name)


def kill_server(settings: Settings, name: str, observe: Observer) -> None:
    # A kind ("kafka") means its first node; a node name ("kafka-2") means that node.
    [server] = [s for s in all_servers(settings) if s.name in (name, f"{name}-1")]
    pid = running_pid(server.layout.pid_file, server.main_class)
    if pid is None:
        raise SystemExit(f"{name} is not running under thumbs; cannot kill it")
    os.kill(pid, signal.SIGKILL)
    time.sleep(3.0)
    observe.during_outage(name)
    failures = start_servers([server], print)
    if failures:
        raise SystemExit("\n".join(failures))


class Observer:
    """Records what the API says while a dependency is down: statuses of POST and /ready."""

    def __init__(self, api: str, url: str) -> None:
        self.api, self.url = api, url
        self.outages: dict[str, dict[str, object]] = {}

    def during_outage(self, name: str) -> None:
        with httpx.Client(base_url=self.api, timeout=15) as client:
            ready = client.get("/ready")
            post = client.post("/thumbnail", json={"source_image_url": self.url})
            self.outages[name] = {"ready": ready.status_code, "checks": ready.json().get("checks"), "post": post.status_code}


def recovery_seconds(api: str, url: str, since: float, timeout: float = 240.0) -> float:
    """Time from the fault until a fresh task completes end to end."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                response = client.post("/thumbnail", json={"source_image_url": url})
                if response.status_code == 202:
                    task_id = response.json()["task_id"]
                    while time.monotonic() < deadline:
                        body = client.get("/thumbnail", params={"task_id": task_id}).json()
                        if body.get("status") in TERMINAL:
                            return time.monotonic() - since
                        time.sleep(0.2)
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
    return float("inf")


def drain(api: str, ledger: Ledger, timeout: float) -> dict[str, str]:
    outcome: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=api, timeout=10) as client:
        while time.monotonic() < deadline and len(outcome) < len(ledger.accepted):
            for task_id in ledger.accepted:
                if task_id in outcome:
                    continue
                try:
                    response = client.get("/thumbnail", params={"task_id": task_id})
                except httpx.HTTPError:
                    continue
                if response.status_code in (200, 202) and response.json()["status"] in TERMINAL:
                    outcome[task_id] = response.json()["status"]
            time.sleep(1.0)
    return outcome


def renders_per_image(settings: Settings) -> Counter[str]:
    """Renders per distinct image: completions that were not deduplicated (a re-render would repeat one)."""
    return Counter(e.payload.source_sha256 for e in completed_events(settings)
                   if isinstance(e.payload, Completed) and not e.payload.deduplicated)


def statistics_settle(api: str, settings: Settings, timeout: float = 180.0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """GET /stats totals (requested, succeeded, failed, repeated) and what the topics hold (requests; tasks with a
    completed record; tasks with a failed one; outcome records beyond each task's first), once they agree or at
    the timeout. A stage killed mid-task may publish an outcome twice: the statistics count the task once."""
    def on_topics() -> tuple[int, ...]:
        requests = len(read_topic(settings, settings.topic(REQUESTED), 10))
        outcomes = [decode(m.value(), m.headers() or []).task_id
                    for topic in (COMPLETED, FAILED) for m in read_topic(settings, settings.topic(topic), 10)]
        succeeded = {e.task_id for e in completed_events(settings)}
        failed = set(outcomes) - succeeded
        return requests, len(succeeded), len(failed), len(outcomes) - len(succeeded) - len(failed)

    def counted() -> tuple[int, ...]:
        try:
            totals = httpx.get(f"{api}/stats", timeout=10).json()["totals"]
        except (httpx.HTTPError, KeyError, ValueError):
            return (-1, -1, -1, -1)
        return totals["requested"], totals["succeeded"], totals["failed"], totals["repeated"]

    deadline = time.monotonic() + timeout
    while (seen := counted()) != (wanted := on_topics()) and time.monotonic() < deadline:
        time.sleep(2.0)
    return seen, wanted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=25.0, help="submissions per second")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order, of: {', '.join(FAULTS)}")
    args = parser.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    if not faults or set(faults) - set(FAULTS):
        parser.error(f"--faults: choose from {', '.join(FAULTS)}")

    base = Settings.from_env()
    ensure_running(base)
    env = isolated_env(base.kafka_bootstrap, (base.cassandra_hosts, base.cassandra_port),
                       base.state_dir / "chaos", TOPIC_PARTITIONS="6")
    settings = settings_of(env)
    ensure_topics(settings)
    migrate(settings)
    images, stack = ImageServer(), Stack(env, names=(*Stack.names, "stats"), static_members=True)
    source = base_image()
    urls = [images.add(f"/chaos/{n}.jpg", distinct_jpeg(n, source)) for n in range(args.tasks)]
    probe_urls = iter(images.add(f"/probe/{n}.jpg", distinct_jpeg(10**6 + n, source)) for n in range(1000))
    stack.start()
    supervisor = Supervisor(stack)
    try:
        stack.wait_ready(120)
        supervisor.start()
        ledger = Ledger()
        load = Load(stack.api, urls, args.rate, ledger)
        observer = Observer(stack.api, next(probe_urls))
        began = time.monotonic()
        load.start()
        phase = args.tasks / args.rate / (len(faults) + 1)
        recoveries: dict[str, float] = {}
        for number, fault in enumerate(faults, 1):
            # Fixed times, spread over the load, so every fault lands while tasks are still arriving.
            time.sleep(max(0.0, began + number * phase - time.monotonic()))
            at = time.monotonic()
            print(f"[{at - began:6.1f}s] SIGKILL {fault}", flush=True)
            if fault in ("kafka", "cassandra"):
                kill_server(base, fault, observer)
            else:
                kill_stage(stack, supervisor, fault)
            recoveries[fault] = recovery_seconds(stack.api, next(probe_urls), at)
            print(f"[{time.monotonic() - began:6.1f}s] {fault} recovered: a fresh task completed "
                  f"{recoveries[fault]:.1f}s after the kill", flush=True)
        load.done.wait(args.tasks / args.rate + 600)
        outcome = drain(stack.api, ledger, args.drain_timeout)
        renders = renders_per_image(settings)
        counted, on_topics = statistics_settle(stack.api, settings)
    finally:
        supervisor.stopped.set()
        stack.stop()
        images.close()
        drop_environment(settings)
    statuses = [outcome.get(t) for t in ledger.accepted]
    lost = [t for t in ledger.accepted if t not in outcome]
    five_hundreds = sum(n for status, n in ledger.refused.items() if status >= 500 and status != 503)
    print("\nchaos run:", time.strftime("%Y-%m-%d %H:%M"), f"{args.tasks} submissions at {args.rate}/s")
    print(f"  accepted (202)            {len(ledger.accepted)}")
    print(f"  refused                   {dict(sorted(ledger.refused.items()))} (+{ledger.errors} connection errors)")
    print(f"  SUCCESS                   {statuses.count('SUCCESS')}")
    print(f"  FAILURE                   {statuses.count('FAILURE')}")
    print(f"  lost                      {len(lost)}")
    twice = sum(1 for n in renders.values() if n > 1)
    print(f"  images rendered twice     {twice} ({sum(renders.values())} renders of {len(renders)} images)")
    print(f"  HTTP 5xx other than 503   {five_hundreds}")
    print(f"  stage restarts by supervisor {supervisor.restarts}")
    for fault, seconds in recoveries.items():
        print(f"  recovery after {fault:<10} {seconds:6.1f}s")
    print(f"  max time to recover       {max(recoveries.values()):.1f}s")
    for name, seen in observer.outages.items():
        print(f"  while {name} was down: POST -> {seen['post']}, /ready -> {seen['ready']} {seen['checks']}")
    exact = counted == on_topics
    print(f"  statistics: requested/succeeded/failed/repeated {counted} vs the topics {on_topics}: "
          f"{'exact' if exact else 'OFF'}")
    return 0 if not lost and not twice and not five_hundreds and exact else 1


if __name__ == "__main__":
    sys.exit(main())
