"""Start, wait for, stop and inspect the local servers; the API behind `thumbs servers` and the test fixtures."""
from __future__ import annotations

import time
from dataclasses import dataclass

from services.common.settings import Settings

from . import versions
from .cassandra import Cassandra
from .kafka import Kafka
from .process import is_alive, rss_kib, running_pid, spawn, tail, terminate
from .server import Say, Server
from .topology import Topology, current, save

POLL_SECONDS = 0.5


class ServersError(RuntimeError):
    """A local server could not be prepared, died while starting, or did not answer in time."""


@dataclass
class Launch:
    server: Server
    pid: int
    since: float


def all_servers(settings: Settings, topology: Topology | None = None) -> list[Server]:
    """Every node of the shape set up (one of each by default). Cassandra first: it boots slowest, so it
    starts while Kafka's jars and storage are prepared."""
    topology = topology or current(settings)
    pinned = versions.load()
    nodes: list[Server] = [Cassandra(settings, pinned, topology, n) for n in range(1, topology.cassandra_nodes + 1)]
    return nodes + [Kafka(settings, pinned, topology, n) for n in range(1, topology.kafka_brokers + 1)]


def ensure_running(settings: Settings, say: Say = print, topology: Topology | None = None) -> None:
    """Starts whichever node does not answer yet and waits for all; raises ServersError with the reason."""
    topology = topology or current(settings)
    save(settings, topology)  # before any storage is formatted: every broker needs the same cluster id
    failures = start_servers(all_servers(settings, topology), say)
    if failures:
        raise ServersError("\n\n".join(failures))


def start_servers(servers: list[Server], say: Say) -> list[str]:
    """Launches every server that is not answering, then waits for all of them; returns failure reports."""
    launches: list[Launch] = []
    failures: list[str] = []
    for server in servers:
        try:
            launch = _launch(server, say)
        except Exception as exc:  # noqa: BLE001 - reported per server, the other one still starts
            failures.append(f"{server.name}: could not start: {exc}")
            continue
        if launch:
            launches.append(launch)
    return failures + _await_ready(launches, say)


def _launch(server: Server, say: Say) -> Launch | None:
    pid = running_pid(server.layout.pid_file, server.main_class)
    if server.answers():
        owner = f"pid {pid}" if pid else "not started by thumbs"
        say(f"{server.name}: already running at {server.address()} ({owner})")
        return None
    if pid:
        say(f"{server.name}: pid {pid} is still starting; waiting for it")
        return Launch(server, pid, time.monotonic())
    argv = server.prepare(say)
    pid = spawn(argv, cwd=server.layout.home, output=server.layout.output, pid_file=server.layout.pid_file)
    say(f"{server.name}: started pid {pid}; log {server.main_log}")
    return Launch(server, pid, time.monotonic())


def _await_ready(launches: list[Launch], say: Say) -> list[str]:
    failures: list[str] = []
    pending = list(launches)
    while pending:
        for launch in list(pending):
            problem = _check(launch, say)
            if problem is not None:
                pending.remove(launch)
                if problem:
                    failures.append(problem)
        if pending:
            time.sleep(POLL_SECONDS)
    return failures


def _check(launch: Launch, say: Say) -> str | None:
    """None while still starting, "" once ready, otherwise a failure report."""
    server, waited = launch.server, time.monotonic() - launch.since
    if not is_alive(launch.pid, None):
        return _report(server, f"exited while starting (after {waited:.1f} s)")
    if server.answers():
        say(f"{server.name}: answering at {server.address()} after {waited:.1f} s (pid {launch.pid})")
        return ""
    if waited > server.ready_timeout:
        # A half-started server would only confuse the next `start`; stop it so that one begins afresh.
        terminate({launch.pid: server.main_class})
        return _report(server, f"did not answer at {server.address()} within {server.ready_timeout:.0f} s; stopped it")
    return None


def _report(server: Server, what: str) -> str:
    parts = [f"{server.name}: {what}"]
    for log in (server.main_log, server.layout.output):
        text = tail(log, 30)
        if text.strip():
            parts.append(f"--- last lines of {log} ---\n{text}")
    return "\n".join(parts)


def stop_servers(servers: list[Server], say: Say, grace: float = 30.0) -> None:
    """SIGTERM to every server started here (all at once), SIGKILL to those still alive after `grace` s."""
    running = {pid: s for s in servers if (pid := running_pid(s.layout.pid_file, s.main_class))}
    stopping = {server.name for server in running.values()}
    for server in servers:
        if server.name not in stopping:
            say(f"{server.name}: not running")
    for pid, server in running.items():
        say(f"{server.name}: stopping pid {pid}")
    killed = terminate({pid: s.main_class for pid, s in running.items()}, grace=grace)
    for pid in killed:
        say(f"{running[pid].name}: did not stop within {grace:.0f} s; killed pid {pid}")
    for server in running.values():
        server.layout.pid_file.unlink(missing_ok=True)


def describe(server: Server) -> tuple[bool, str]:
    """(answers, one status line) for `thumbs servers status`."""
    pid = running_pid(server.layout.pid_file, server.main_class)
    answers = server.answers()
    if pid:
        memory = rss_kib(pid) or 0
        state = "answering" if answers else "NOT answering (starting, or stuck: see `thumbs servers logs`)"
        return answers, f"{server.name}: pid {pid}, {state} at {server.address()}, RSS {memory // 1024} MiB"
    if answers:
        return True, f"{server.name}: answering at {server.address()} (not started by thumbs)"
    return False, f"{server.name}: not running"
