"""CPU seconds and resident memory of running processes, read from /proc (Linux only)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
T = TypeVar("T")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of every thread of `pid` (children not included), or None once it is gone."""
    try:
        fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5), after pid and comm


def rss_kib(pid: int) -> int | None:
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return 0  # a zombie has no VmRSS line


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent outside idle and iowait since boot (/proc/stat)."""
    values = [int(v) for v in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS


def descendants(root: int) -> list[int]:
    """Every live process below `root` (e.g. a process pool's workers), found through the ppid field."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, frontier = [], [root]
    while frontier and len(found) < 10_000:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return found


def listening_pid(port: int, marker: str) -> int | None:
    """The process whose command line contains `marker` and that holds the listening socket on `port`."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{parts[9]}]")
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker not in (entry / "cmdline").read_bytes().decode(errors="replace"):
                continue
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return None


@dataclass
class Window:
    """What the sampler saw between `mark()` and `read()`: CPU seconds and peak RSS (MiB) per group."""

    cpu: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    machine_cpu: float = 0.0
    seconds: float = 0.0

    def ms_per(self, count: int, groups: Iterable[str]) -> dict[str, float]:
        """CPU milliseconds per unit of work (request, task) of each group over this window."""
        return {group: 1000 * self.cpu.get(group, 0.0) / max(1, count) for group in groups}

    @property
    def other_cpu(self) -> float:
        """Machine CPU seconds not spent by any sampled group: other load sharing the cores."""
        return self.machine_cpu - sum(self.cpu.values())


class Sampler:
    """Samples groups of processes every `interval` s in a thread; a group is a function returning its pids.

    Workers that start during a window count from zero; workers that exit keep their last sample, so a
    pool that replaces a crashed worker is still counted in full.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 0.5) -> None:
        self._groups = groups
        self._interval = interval
        self._lock = threading.Lock()
        self._base: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._peak: dict[str, float] = {}
        self._seen: dict[str, set[int]] = {}
        self._machine = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-sampler", daemon=True)

    def start(self) -> None:
        self.mark()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def mark(self) -> None:
        """Starts a new window: CPU counts from now, peaks are forgotten."""
        with self._lock:
            self._base, self._last, self._peak, self._seen = {}, {}, {}, {}
            self._machine = (machine_busy_seconds(), time.monotonic())
            self._sample(first=True)

    def read(self) -> Window:
        with self._lock:
            self._sample()
            window = Window(machine_cpu=machine_busy_seconds() - self._machine[0],
                            seconds=time.monotonic() - self._machine[1])
            for pid, (group, seconds) in self._last.items():
                window.cpu[group] = window.cpu.get(group, 0.0) + seconds - self._base.get(pid, 0.0)
            window.peak_rss_mib = dict(self._peak)
            window.processes = {group: len(pids) for group, pids in self._seen.items()}
            return window

    def during(self, action: Callable[[], T]) -> tuple[T, Window]:
        """Runs `action` in a window of its own (mark, run, read): what it returned and what it cost."""
        self.mark()
        value = action()
        return value, self.read()

    def current_rss_mib(self) -> dict[str, float]:
        with self._lock:
            return {group: sum((rss_kib(pid) or 0) for pid in pids()) / 1024 for group, pids in self._groups.items()}

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                self._sample()

    def _sample(self, first: bool = False) -> None:
        for group, pids in self._groups.items():
            total_kib = 0
            for pid in pids():
                seconds, kib = cpu_seconds(pid), rss_kib(pid)
                if seconds is None:
                    continue
                if first:
                    self._base[pid] = seconds
                self._last[pid] = (group, seconds)
                self._seen.setdefault(group, set()).add(pid)
                total_kib += kib or 0
            self._peak[group] = max(self._peak.get(group, 0.0), total_kib / 1024)
