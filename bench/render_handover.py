"""What handing an image to a render process costs, with glibc's allocator as it comes and as the stages set it.

Run from the repository root: `.venv/bin/python bench/render_handover.py [--requests N] [--rounds R]`.

Two render processes (services/resizer/processes.py) run side by side: one set up as the resizer sets up its
own (`prepare_render_process`: glibc keeps freed memory, services/common/allocator.py), one left at glibc's
defaults. Each round sends both the same distinct FullHD JPEGs, `--in-flight` at a time, first to a job that
only takes the bytes (the hand-over alone), then to the real render job. CPU is read from /proc/<pid>/schedstat
(nanoseconds) for the children and from this process's clock for the parent side; the two set-ups alternate
in order each round, and the figures are medians over rounds.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `services` importable from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.resize_core import corpus
from services.common.model import Rendition
from services.resizer.processes import RenderProcesses
from services.resizer.render import die_with_parent, prepare_render_process, render_job

RENDITIONS = [Rendition(100, 100, "jpeg", 85)]
SETUPS = {"glibc defaults": die_with_parent, "memory kept": prepare_render_process}


def take(data: bytes, _header: Any) -> int:
    """The hand-over alone: the child receives the bytes and answers."""
    return len(data)


def child_seconds(processes: RenderProcesses) -> float:
    total = 0
    for process in processes.processes:
        total += int(Path(f"/proc/{process.pid}/schedstat").read_text().split()[0])
    return total / 1e9


def distinct(images: list[bytes], n: int, salt: int) -> list[bytes]:
    """Each a base image with a COM segment of its own after SOI: new bytes, same pixels."""
    out = []
    for i in range(n):
        base, comment = images[i % len(images)], f"{salt}:{i:012d}".encode()
        out.append(base[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + base[2:])
    return out


async def per_request(processes: RenderProcesses, datas: list[bytes], in_flight: int) -> tuple[float, float]:
    """(child, parent) CPU seconds per request."""
    child, parent = child_seconds(processes), time.process_time()
    for start in range(0, len(datas), in_flight):
        await asyncio.gather(*(processes(d, RENDITIONS) for d in datas[start:start + in_flight]))
    n = len(datas)
    return (child_seconds(processes) - child) / n, (time.process_time() - parent) / n


async def run(args: argparse.Namespace) -> None:
    images = corpus("fullhd", 4, args.seed)
    render = partial(render_job, max_pixels=50_000_000, max_frames=1000)
    pools = {(name, job): RenderProcesses(fn, 1, initializer=setup)
             for name, setup in SETUPS.items() for job, fn in (("take", take), ("render", render))}
    figures: dict[tuple[str, str, str], list[float]] = {}
    try:
        for pool in pools.values():
            await pool(images[0], RENDITIONS)  # started, imported, warm
        for turn in range(args.rounds):
            names = list(SETUPS) if turn % 2 == 0 else list(reversed(SETUPS))
            for job, count in (("take", args.requests), ("render", max(1, args.requests // 5))):
                datas = distinct(images, count, turn)
                for name in names:
                    child, parent = await per_request(pools[(name, job)], datas, args.in_flight)
                    figures.setdefault((name, job, "child"), []).append(child)
                    figures.setdefault((name, job, "parent"), []).append(parent)
    finally:
        for pool in pools.values():
            await pool.close()
    print(f"{args.rounds} rounds; hand-over: {args.requests} distinct FullHD JPEGs (~{len(images[0]) // 1024} KiB), "
          f"render: {max(1, args.requests // 5)}; {args.in_flight} in flight; CPU per request, median of rounds")
    print(f"{'':16}{'hand-over child':>17}{'parent':>10}{'render child':>15}{'parent':>10}")
    median = {key: statistics.median(values) for key, values in figures.items()}
    for name in SETUPS:
        print(f"{name:16}{median[(name, 'take', 'child')] * 1e6:>14.0f} µs{median[(name, 'take', 'parent')] * 1e6:>7.0f} µs"
              f"{median[(name, 'render', 'child')] * 1e3:>12.2f} ms{median[(name, 'render', 'parent')] * 1e6:>7.0f} µs")
    kept, default = "memory kept", "glibc defaults"
    ratios = [k / d for k, d in zip(figures[(kept, "take", "child")], figures[(default, "take", "child")], strict=True)]
    render_ratios = [k / d for k, d in zip(figures[(kept, "render", "child")], figures[(default, "render", "child")],
                                           strict=True)]
    print(f"child CPU, memory kept / glibc defaults (median of per-round ratios): hand-over "
          f"{statistics.median(ratios):.2f}×, render {statistics.median(render_ratios):.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="hand-overs per set-up and round (renders: a fifth)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--in-flight", type=int, default=4, help="requests sent before waiting for their answers")
    parser.add_argument("--seed", type=int, default=0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
