"""`thumbs run`: the API and every stage as child processes in the foreground, restarted if one dies."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from services.common.settings import Settings

PROCESSES = ("api", "fetcher", "resizer", "projector")


def _spawn(name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "services.cli", name])


def run_all(settings: Settings) -> int:
    from services.common.cassandra import migrate
    from services.common.kafka import ensure_topics

    ensure_topics(settings)
    migrate(settings)
    children = {name: _spawn(name) for name in PROCESSES}
    print(f"thumbs: API on http://{settings.api_host}:{settings.api_port} (docs at /docs); Ctrl-C stops everything")
    stopping = False

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    restarts: dict[str, float] = {}
    while not stopping:
        time.sleep(0.5)
        for name, child in list(children.items()):
            if child.poll() is not None and not stopping:
                # Back off a little so a process that cannot start does not spin.
                if time.monotonic() - restarts.get(name, 0.0) > 5.0:
                    print(f"thumbs: {name} exited with {child.returncode}; restarting", file=sys.stderr)
                    restarts[name] = time.monotonic()
                    children[name] = _spawn(name)
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
