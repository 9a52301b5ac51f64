"""HTTP request counts and latency by route, method and status, and the access log (a pure ASGI middleware)."""
from __future__ import annotations

import logging
import time
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import tracing
from services.common.metrics import HTTP_REQUESTS, HTTP_SECONDS

TRACE_HEADER_KEYS = frozenset(name.encode() for name in tracing.TRACE_HEADERS)
access_log = logging.getLogger("thumbs.access")
UNLOGGED = frozenset({"/health", "/ready", "/livez", "/readyz", "/metrics"})  # probes and scrapes, every few seconds each
ROUTES = frozenset({"/", "/thumbnail", "/thumbnail/file", "/thumbnail/events", "/health", "/ready", "/livez", "/readyz", "/metrics",
                    "/openapi.json", "/docs"})
MOUNTS = ("/docs/assets", "/page")  # static files: each labelled by its folder


class HttpMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        # Label by known route only: arbitrary paths must not grow the metric's cardinality.
        route = path if path in ROUTES else next((m for m in MOUNTS if path.startswith(m + "/")), "unmatched")
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in TRACE_HEADER_KEYS}
            with tracing.request_span(scope["method"], route, headers) as span:
                await self.app(scope, receive, send_wrapper)
                if span is not None:
                    span.set_attribute("http.response.status_code", status)
        finally:
            elapsed = time.perf_counter() - started
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            HTTP_SECONDS.labels(route, scope["method"]).observe(elapsed)
            if route not in UNLOGGED:
                client = scope.get("client")
                access_log.info("%s %s %d", scope["method"], path, status, extra={
                    "method": scope["method"], "path": path, "status": status, "duration_ms": round(elapsed * 1000, 2),
                    "client": client[0] if client else "", "task_id": _task_id(scope),
                })


def _task_id(scope: Scope) -> str:
    """The task a request created (set by the handler) or asked about (its query), for the access log."""
    created = scope.get("state", {}).get("task_id")
    if created:
        return str(created)
    asked = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1")).get("task_id", [""])
    return asked[0][:64]
