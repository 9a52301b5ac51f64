"""How many cores this process may really use: the CPUs it may run on, capped by its container's CPU quota.

A container limited to 2 CPUs on a 64-core node still sees 64 CPUs; sizing a process pool from that count
starts 64 workers that the quota then throttles. The quota is cgroup v2's `cpu.max` (`<quota> <period>` or
`max <period>`) or cgroup v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`; the tightest one on the path from
the process's cgroup up to the root applies.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cores(cpu_max: str) -> float | None:
    """Cores allowed by a cgroup v2 `cpu.max` line; None when unlimited or unreadable."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(folder: Path) -> float | None:
    try:
        return quota_cores((folder / "cpu.max").read_text())
    except OSError:
        return None


def _cgroup_paths(proc_self_cgroup: str) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu controller path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in proc_self_cgroup.splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if number == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def _tightest(base: Path, path: str, read: Callable[[Path], float | None]) -> float | None:
    found: list[float] = []
    folder = base / path.lstrip("/")
    for candidate in (folder, *folder.parents):
        if candidate == base.parent or not candidate.is_relative_to(base):
            break
        quota = read(candidate)
        if quota is not None:
            found.append(quota)
    return min(found, default=None)


def usable_cores(root: Path = CGROUP_ROOT, proc_self_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota (rounded up; at least 1)."""
    cores = len(os.sched_getaffinity(0))
    try:
        v2, v1 = _cgroup_paths(proc_self_cgroup.read_text())
    except OSError:
        return cores
    quotas = []
    if v2 is not None:
        quotas.append(_tightest(root, v2, _v2_quota))
    if v1 is not None:
        quotas.append(_tightest(root / "cpu", v1, _v1_quota))
    limit = min((q for q in quotas if q is not None), default=None)
    return max(1, min(cores, math.ceil(limit))) if limit is not None else cores
