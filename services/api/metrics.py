"""HTTP request counts and latency by route, method and status (a pure ASGI middleware)."""
from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.metrics import HTTP_REQUESTS, HTTP_SECONDS

ROUTES = frozenset({"/thumbnail", "/thumbnail/file", "/health", "/ready", "/metrics", "/openapi.json", "/docs"})


class HttpMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        # Label by known route only: arbitrary paths must not grow the metric's cardinality.
        route = path if path in ROUTES else ("/docs/assets" if path.startswith("/docs/assets/") else "unmatched")
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            HTTP_SECONDS.labels(route, scope["method"]).observe(time.perf_counter() - started)
