"""The REST app's pure-ASGI middleware: API key, body size limit, a budget for the bodies being
received, connection closing during shutdown, request metrics. Cheap on the hot path: no request
object is built."""

from __future__ import annotations

import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.body_limit import BodySizeLimit, declared_body, refuse_unread
from reward_service.engine.engine import Engine
from reward_service.engine.metrics import Metrics
from reward_service.serving.auth import OPEN_PATH_PREFIXES, is_authorized
from reward_service.serving.http_errors import (
    BODY_TOO_LARGE,
    TOO_MANY_BYTES_IN_FLIGHT,
    error_response,
)


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
            "this server needs an API key: send 'Authorization: Bearer KEY', or the key as the "
            "password of Basic credentials (http://user:KEY@host:port/...)",
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


class BodyBytesBudget:
    """Bounds the bytes of all request bodies being received at once, which the per-body limit
    and the read deadlines bound only per connection (up to --max-connections bodies of
    --max-body-bytes each, held until their deadline). Each request reserves its Content-Length
    (a chunked one: the body limit, the most it can grow to) before its body is read, and gives
    it back once the body is in, the client has gone, or the request ends; bodies of at most
    SMALL_BODY_BYTES are left out. A request that does not fit gets 429
    `too_many_bytes_in_flight` with Retry-After, unread: clients retry it, as they do a full
    queue. Pure ASGI, and all on the event loop, so the count needs no lock."""

    RETRY_AFTER_S = 1
    # Bodies this small are never counted, so stalled uploads can't starve ordinary requests and
    # health checks: --max-connections (1,024) of them hold at most 64 MiB. uvicorn reads this
    # much before it pauses a connection (its flow control's high-water mark).
    SMALL_BODY_BYTES = 64 * 1024

    def __init__(
        self, app: ASGIApp, budget_bytes: int, max_body_bytes: int, metrics: Metrics
    ) -> None:
        self.app = app
        self.budget_bytes = budget_bytes
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self.in_flight = 0

    def _reservation(self, scope: Scope) -> int:
        chunked, declared = declared_body(scope)
        if chunked:
            return self.max_body_bytes
        size = declared or 0
        # Past the body limit it is refused unread (413, inside), which a retry would not change.
        if size <= self.SMALL_BODY_BYTES or size > self.max_body_bytes:
            return 0
        return size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reserved = self._reservation(scope) if scope["type"] == "http" else 0
        if reserved == 0:
            await self.app(scope, receive, send)
            return
        if self.in_flight + reserved > self.budget_bytes:
            self.metrics.http_body_budget_refusals.inc()
            status, kind = TOO_MANY_BYTES_IN_FLIGHT
            message = (
                f"the server is receiving {self.in_flight} bytes of request bodies, and this "
                f"one's {reserved} would pass its budget of {self.budget_bytes}: retry shortly"
            )
            headers = {"Retry-After": str(self.RETRY_AFTER_S)}
            await refuse_unread(
                error_response(status, kind, message, headers), scope, receive, send
            )
            return
        self._take(reserved)

        def give_back() -> None:
            nonlocal reserved
            self._take(-reserved)
            reserved = 0

        async def receive_and_account() -> Message:
            message = await receive()
            if reserved and (
                message["type"] != "http.request" or not message.get("more_body", False)
            ):
                give_back()
            return message

        try:
            await self.app(scope, receive_and_account, send)
        finally:
            if reserved:
                give_back()

    def _take(self, size: int) -> None:
        self.in_flight += size
        self.metrics.http_body_bytes_in_flight.set(self.in_flight)


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
