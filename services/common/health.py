"""A stage's probes and metrics: /livez, /readyz and /metrics on its metrics port, served from a thread.

Live: every consumer loop has polled within `stale_after` seconds (a loop iterates at least once a second
while healthy, busy or idle), so a blocked event loop or a hung client call shows as 503 and the orchestrator
restarts the process. Ready: every consumer-group member holds an assignment (it has joined the group,
possibly with no partitions when there are more members than partitions) and every dependency check passes.
The server runs on its own thread so that it can still answer when the event loop is stuck.
"""
from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

Check = Callable[[], bool]
STALE_AFTER_S = 30.0


class Member(Protocol):
    """What the probes read of a consumer-group member (stage.Subscription)."""

    @property
    def last_poll(self) -> float: ...

    @property
    def joined(self) -> bool: ...


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str


class Health:
    def __init__(self, members: Sequence[Member], checks: Mapping[str, Check] | None = None, *,
                 stale_after: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._members = members
        self._checks = dict(checks or {})
        self._stale_after = stale_after
        self._clock = clock

    def live(self) -> Verdict:
        now = self._clock()
        oldest = max((now - m.last_poll for m in self._members), default=0.0)
        if oldest > self._stale_after:
            return Verdict(False, f"a consumer loop has not polled for {oldest:.0f} s (limit {self._stale_after:.0f} s)")
        return Verdict(True, "polling")

    def ready(self) -> Verdict:
        waiting = sum(1 for m in self._members if not m.joined)
        if waiting:
            return Verdict(False, f"{waiting} of {len(self._members)} consumers have no group assignment yet")
        for name, check in self._checks.items():
            try:
                reachable = check()
            except Exception as exc:  # noqa: BLE001 - a failing check is an answer, not a crash of the probe
                return Verdict(False, f"{name} check failed: {type(exc).__name__}: {exc}")
            if not reachable:
                return Verdict(False, f"{name} not reachable")
        return Verdict(True, "assigned, dependencies reachable")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes arrive every few seconds: a line each would drown the stage's own log."""


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def probe_app(health: Health) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/livez", "/readyz"):
            verdict = health.live() if path == "/livez" else health.ready()
            body = json.dumps({"status": "ok" if verdict.ok else "fail", "reason": verdict.reason}).encode()
            start_response("200 OK" if verdict.ok else "503 Service Unavailable",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)  # type: ignore[no-any-return]

    return app


def serve(host: str, port: int, health: Health) -> WSGIServer | None:
    """Starts the probe server (port 0 turns it off); the caller shuts it down."""
    if not port:
        return None
    server = make_server(host, port, probe_app(health), _ThreadingServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    return server
