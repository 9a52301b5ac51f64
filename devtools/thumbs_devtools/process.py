"""Detached JVM processes tracked by pid files: spawn, identify, stop, and read their logs."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# Servers this process started and may have to reap; kept so that no handle is collected (with a
# "still running" warning) while the server it names is meant to outlive us.
_children: dict[int, subprocess.Popen[bytes]] = {}


def spawn(argv: Sequence[str], *, cwd: Path, output: Path, pid_file: Path) -> int:
    """Starts `argv` in its own session (it outlives the caller) and records its pid."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("ab") as sink:
        proc = subprocess.Popen(
            list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    _children[proc.pid] = proc
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def running_pid(pid_file: Path, marker: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line contains `marker`."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if is_alive(pid, marker) else None


def is_alive(pid: int, marker: str | None) -> bool:
    # The marker (the main class) guards against a recycled pid; a zombie counts as dead. A process we
    # have just spawned is checked without it: its command line can lag behind the exec for a moment.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z" and (marker is None or marker in cmdline)


def terminate(targets: Mapping[int, str], *, grace: float = 30.0) -> list[int]:
    """SIGTERM every pid (the servers' shutdown hooks flush and close), SIGKILL those alive after `grace` s.

    `targets` maps each pid to its command-line marker; returns the pids that had to be killed.
    """
    for pid in targets:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(targets):
        _reap(list(targets))
        time.sleep(0.2)
    killed = _alive(targets)
    for pid in killed:
        _signal(pid, signal.SIGKILL)
    _reap(killed)
    return killed


def _alive(targets: Mapping[int, str]) -> list[int]:
    return [pid for pid, marker in targets.items() if is_alive(pid, marker)]


def rss_kib(pid: int) -> int | None:
    """Resident set size in KiB (as `ps -o rss` shows it)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        return None
    return None


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as handle:
            start = max(0, handle.seek(0, os.SEEK_END) - 1024 * lines)
            handle.seek(start)
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    kept = text.splitlines()[1:] if start else text.splitlines()  # the first line read may be cut
    return "\n".join(kept[-lines:])


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _reap(pids: Sequence[int]) -> None:
    # When the caller itself spawned a server, collect it so it does not linger as a zombie.
    for pid in pids:
        child = _children.get(pid)
        if child is not None:
            if child.poll() is not None:
                del _children[pid]
            continue
        with contextlib.suppress(ChildProcessError):  # not our child: init reaps it
            os.waitpid(pid, os.WNOHANG)
