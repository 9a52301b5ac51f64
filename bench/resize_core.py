"""Thumbnails per second per core: the old naive path, the fastest inline Pillow path, and make_thumbnail.

Run from the repository root: `python bench/resize_core.py [--processes N]`. Everything runs in this
process on the same seeded images, with the three paths interleaved in each round so that clock or
thermal drift hits them alike; each figure is the median over rounds.

Every path runs once on the largest image before any timing. glibc raises its mmap threshold after
a large buffer is freed, after which full-size decodes reuse heap memory instead of faulting in
fresh pages: the naive path gets ~20-40 % faster once a process has seen one big image. A long-lived
worker lives in that state, so that is the fair one to compare in (and the one least kind to us).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and `services` importable from the root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image, features

from bench.corpus import build_corpus
from services.common.model import Rendition
from services.resizer.imaging import make_thumbnail

BOX = (100, 100)
RENDITION = Rendition(*BOX, "jpeg", 85)
LIMITS = {"max_pixels": 50_000_000, "max_frames": 1000}
Render = Callable[[bytes], bytes]


def naive(data: bytes) -> bytes:
    """The old system: full-size decode and conversion before shrinking."""
    image = Image.open(BytesIO(data)).convert("RGB")
    image.thumbnail(BOX)
    out = BytesIO()
    image.save(out, "JPEG", quality=RENDITION.quality)
    return out.getvalue()


def best(data: bytes) -> bytes:
    """The limit: DCT-scaled decode, Pillow's default reducing gap, no checks, no colour work."""
    image = Image.open(BytesIO(data))
    image.draft("RGB", BOX)
    image.thumbnail(BOX, reducing_gap=2.0)
    out = BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=RENDITION.quality)
    return out.getvalue()


def ours(data: bytes) -> bytes:
    return make_thumbnail(data, RENDITION, **LIMITS).data


PATHS: dict[str, Render] = {"naive": naive, "best": best, "ours": ours}


def rate(path: Render, images: list[bytes], loops: int) -> float:
    """Thumbnails per CPU second of this process: other load on a shared machine barely moves it."""
    started = time.process_time()
    for _ in range(loops):
        for data in images:
            path(data)
    return loops * len(images) / (time.process_time() - started)


def measure(images: list[bytes], rounds: int, loops: int) -> dict[str, float]:
    """Median rate per path, and of the per-round ratios (paths rotate order each round, so drift hits all)."""
    for path in PATHS.values():
        path(images[0])  # warm caches and lazy plugin imports outside the timing
    names = list(PATHS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for turn in range(rounds):
        for name in names[turn % 3:] + names[:turn % 3]:
            # The naive path is ~3x slower: fewer loops keep each path's share of a round balanced.
            rates[name].append(rate(PATHS[name], images, max(1, loops // 3) if name == "naive" else loops))
    result = {name: statistics.median(values) for name, values in rates.items()}
    for other in ("naive", "best"):
        result[f"ours/{other}"] = statistics.median(o / x for o, x in zip(rates["ours"], rates[other], strict=True))
    return result


_pool_images: list[bytes] = []


def _load(images: list[bytes]) -> None:
    _pool_images[:] = images


def _one(index: int) -> int:
    return len(ours(_pool_images[index % len(_pool_images)]))


def pool_rate(images: list[bytes], processes: int, tasks: int) -> float:
    """Thumbnails per second of `processes` worker processes sharing one queue of tasks."""
    with multiprocessing.Pool(processes, initializer=_load, initargs=(images,)) as pool:
        pool.map(_one, range(processes * 2))  # start and warm every worker
        started = time.perf_counter()
        pool.map(_one, range(tasks), chunksize=1)
        return tasks / (time.perf_counter() - started)


def corpus(kind: str, count: int, seed: int) -> list[bytes]:
    with tempfile.TemporaryDirectory() as folder:
        return [path.read_bytes() for path in build_corpus(Path(folder), count=count, kind=kind, seed=seed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per path; the median is shown")
    parser.add_argument("--loops", type=int, default=3, help="passes over the images per round (naive: a third)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="workers for the scaling run (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"Pillow {Image.__version__}, libjpeg-turbo {features.version('libjpeg_turbo')}, "
          f"{os.cpu_count()} CPUs, box {BOX[0]}x{BOX[1]}, quality {RENDITION.quality}")
    sets = {"FullHD": corpus("fullhd", 4, args.seed), "12 MP": corpus("12mp", 2, args.seed)}
    for path in PATHS.values():
        path(sets["12 MP"][0])  # steady state of a long-lived worker (see the module docstring)
    print("\nper core: thumbnails per CPU second, median of rounds; ratios are medians of per-round ratios")
    print(f"{'source':<8}{'naive/s':>9}{'best/s':>9}{'ours/s':>9}{'ours/naive':>12}{'ours/best':>11}")
    for label, images in sets.items():
        result = measure(images, args.rounds, args.loops)
        print(f"{label:<8}{result['naive']:>9.1f}{result['best']:>9.1f}{result['ours']:>9.1f}"
              f"{result['ours/naive']:>11.2f}x{result['ours/best']:>10.2f}x")
    if args.processes > 0:
        print("\nours with a process pool (thumbnails/s, all workers together)")
        print(f"{'source':<8}{'1 proc':>9}{f'{args.processes} procs':>11}{'scaling':>9}")
        for label, images in sets.items():
            tasks = 60 if label == "FullHD" else 16
            single = pool_rate(images, 1, tasks)
            many = pool_rate(images, args.processes, tasks * args.processes)
            print(f"{label:<8}{single:>9.1f}{many:>11.1f}{many / single:>8.2f}x")


if __name__ == "__main__":
    main()
