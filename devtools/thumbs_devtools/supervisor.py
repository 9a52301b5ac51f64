"""`thumbs run`: the API and every stage as child processes in the foreground, restarted if one dies."""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from typing import Any

from services.common.settings import PREFIX, Settings

PROCESSES = ("api", "fetcher", "resizer", "projector", "notifier", "stats")
SCALABLE = ("fetcher", "resizer", "projector", "notifier", "stats")
# Instance N of a stage serves /metrics (and the stats stage its web views) on its stage's ports + 10(N-1):
# 9101, 9111, 9121 ... for fetchers.
METRICS_PORT_STEP = 10


class ScaleError(ValueError):
    """A --scale value that names no scalable stage or no positive count."""


def parse_scale(text: str) -> dict[str, int]:
    """`fetcher=2,resizer=3` → {"fetcher": 2, "resizer": 3}; stages not named run once."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        stage, _, count = part.partition("=")
        if stage not in SCALABLE or not count.isdigit() or int(count) < 1:
            raise ScaleError(f"--scale {part!r}: use STAGE=N with N >= 1 and STAGE one of {', '.join(SCALABLE)}")
        counts[stage] = int(count)
    return counts


@dataclass(frozen=True)
class Instance:
    """One child process: `stage` is what it runs, `name` tells it apart (fetcher-2)."""

    stage: str
    number: int

    @property
    def name(self) -> str:
        return self.stage if self.number == 1 else f"{self.stage}-{self.number}"

    def environment(self, settings: Settings, *, member_id: str = "") -> dict[str, str]:
        """What differs between instances: the name on their log lines and, for a stage, the metrics port and,
        given one, the static member id (they share the consumer group)."""
        named = {PREFIX + "LOG_NAME": self.name}  # their lines interleave on one terminal
        if self.stage not in SCALABLE:
            return named
        ports = {}
        for field in (f.name for f in fields(settings) if f.name.startswith(f"{self.stage}_") and f.name.endswith("_port")):
            base = getattr(settings, field)
            ports[PREFIX + field.upper()] = str(base + METRICS_PORT_STEP * (self.number - 1) if base else 0)
        return {**named, **ports, **({PREFIX + "INSTANCE": member_id} if member_id else {})}


def register(subparsers: Any) -> None:
    """Adds `run` to a parser's subcommands (the `thumbs.commands` entry point); its handler is (settings, args) -> int."""
    run = subparsers.add_parser("run", help="create topics and tables, then run the API and every stage until Ctrl-C")
    run.set_defaults(handler=_run)
    run.add_argument("--scale", default="", metavar="STAGE=N,...",
                     help="instances per stage, e.g. fetcher=2,resizer=2 (they share one consumer group); "
                          "by default one resizer per core, each stage else once")


def _run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        scale = parse_scale(args.scale)
    except ScaleError as exc:
        print(f"thumbs: {exc}", file=sys.stderr)
        return 2
    return run_all(settings, scale)


def default_scale(settings: Settings, cores: int) -> dict[str, int]:
    """One resizer per core when each renders in one process (the default): several resizers, the Kafka way,
    measured faster than one resizer handing every image to a pool of several (bench/RESULTS.md)."""
    return {"resizer": max(1, cores // settings.resizer_workers) if settings.resizer_workers else 1}


def instances(scale: dict[str, int]) -> list[Instance]:
    return [Instance(stage, n) for stage in PROCESSES for n in range(1, scale.get(stage, 1) + 1)]


def spawn(instance: Instance, settings: Settings) -> subprocess.Popen[bytes]:
    # Static membership: a stage restarted here (or a broker that comes back) resumes its partitions at
    # once instead of waiting out the old member's session. Host + name is unique: two `thumbs run` on one
    # host with the same settings would already clash on the API port.
    member_id = f"{socket.gethostname()}-{instance.name}"
    env = {**os.environ, **instance.environment(settings, member_id=member_id)}
    return subprocess.Popen([sys.executable, "-m", "services.cli", instance.stage], env=env)


def run_all(settings: Settings, scale: dict[str, int] | None = None) -> int:
    from services.common.cassandra import migrate
    from services.common.cpu import usable_cores
    from services.common.topics import ensure_topics

    # Changing live topics is an operator's decision (`thumbs topics --apply`): only warn here.
    topics = ensure_topics(settings)
    for topic in topics.topics:
        if not topic.in_sync:
            print(f"thumbs: warning: topic {topic.name}: {topic.summary()}", file=sys.stderr)
    if topics.applicable:
        print("thumbs: warning: `thumbs topics --apply` applies the topic differences", file=sys.stderr)
    migrate(settings)
    scale = {**default_scale(settings, usable_cores()), **(scale or {})}
    children = {instance: spawn(instance, settings) for instance in instances(scale)}
    print(f"thumbs: API on http://{settings.api_host}:{settings.api_port} (docs at /docs); "
          f"{', '.join(i.name for i in children)}; Ctrl-C stops everything")
    stopping = False

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    restarts: dict[Instance, float] = {}
    while not stopping:
        time.sleep(0.5)
        for instance, child in list(children.items()):
            if child.poll() is not None and not stopping:
                # Back off a little so a process that cannot start does not spin.
                if time.monotonic() - restarts.get(instance, 0.0) > 5.0:
                    print(f"thumbs: {instance.name} exited with {child.returncode}; restarting", file=sys.stderr)
                    restarts[instance] = time.monotonic()
                    children[instance] = spawn(instance, settings)
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + 20
    for child in children.values():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
