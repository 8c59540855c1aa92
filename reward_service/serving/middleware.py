"""The REST app's pure-ASGI middleware: API key, body size limit, connection closing during
shutdown, request metrics. Cheap on the hot path: no request object is built."""

from __future__ import annotations

import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.body_limit import BodySizeLimit
from reward_service.engine.engine import Engine
from reward_service.engine.metrics import Metrics
from reward_service.serving.auth import OPEN_PATH_PREFIXES, is_authorized
from reward_service.serving.http_errors import BODY_TOO_LARGE, error_response


class ApiKeyMiddleware:
    """Refuses REST requests without the key with 401, before any route runs. Pure ASGI."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATH_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if is_authorized(authorization, self.api_key):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "unauthorized",
            "this server needs an API key: send 'Authorization: Bearer KEY'",
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


class BodySizeLimitMiddleware(BodySizeLimit):
    """413 `body_too_large` for a request body over `max_body_bytes`, without reading it (see
    BodySizeLimit). Pure ASGI."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        def refusal(size: str) -> Response:
            status, kind = BODY_TOO_LARGE
            message = (
                f"the request body has {size}; this server takes at most {max_body_bytes} "
                "bytes: send fewer items per request"
            )
            return error_response(status, kind, message)

        super().__init__(app, max_body_bytes, refusal)


class CloseConnectionsWhenShuttingDown:
    """Once shutting down, every answer closes its connection, so that no client sends its next
    request on a connection the server is about to close. Pure ASGI."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.engine.shutting_down:
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


class RequestMetricsMiddleware:
    """Counts requests by route and status and times them. Pure ASGI: cheap on the hot path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels("http", path, str(status)).inc()
            self.metrics.request_latency.labels("http", path).observe(time.perf_counter() - started)
