"""REST transport: a thin FastAPI layer over the engine. No model logic lives here."""

from __future__ import annotations

import time
from collections import defaultdict
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service import errors, openrlhf
from reward_service.auth import ApiKeyMiddleware
from reward_service.config import ServeSettings
from reward_service.engine import Engine
from reward_service.metrics import Metrics
from reward_service.schemas import (
    ErrorResponse,
    ModelList,
    ScoreRequest,
    ScoreResponse,
    describe_validation_errors,
)

# Engine error -> (HTTP status, machine-readable type). One table for the whole REST API.
ERROR_STATUS: dict[type[errors.RewardServiceError], tuple[int, str]] = {
    errors.InvalidRequest: (422, "invalid_request"),
    errors.ItemTooLong: (422, "item_too_long"),
    errors.TooManyItems: (413, "too_many_items"),
    errors.ModelNotFound: (404, "model_not_found"),
    errors.QueueFull: (429, "queue_full"),
    errors.NotReady: (503, "not_ready"),
    errors.ShuttingDown: (503, "shutting_down"),
    errors.DeadlineExceeded: (504, "deadline_exceeded"),
}
# Refused by BodySizeLimitMiddleware before any route runs.
BODY_TOO_LARGE = (413, "body_too_large")
DEFAULT_MAX_BODY_BYTES = ServeSettings.model_fields["max_body_bytes"].default


def error_response(
    status: int, kind: str, message: str, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _error_responses() -> dict[int, dict]:
    """The OpenAPI `responses` of a scoring route: each status with every error type it carries."""
    kinds: dict[int, list[str]] = defaultdict(list)
    for status, kind in [*ERROR_STATUS.values(), BODY_TOO_LARGE]:
        kinds[status].append(kind)
    return {
        status: {"model": ErrorResponse, "description": ", ".join(names)}
        for status, names in sorted(kinds.items())
    }


ERROR_RESPONSES = _error_responses()


def create_app(
    engine: Engine, *, api_key: str | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> FastAPI:
    """`api_key`: when set, every route but /health/* and /metrics needs it as a bearer token.
    `max_body_bytes`: larger request bodies get 413 before they are read."""
    app = FastAPI(
        title="Reward service",
        description="Scores texts with reward models (sequence classifiers), batched across "
        "requests.",
        version="1",
    )
    # The last added runs first: metrics count every answer, refusals included; the key is
    # checked before a body is read.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(CloseConnectionsWhenShuttingDown, engine=engine)
    app.add_middleware(RequestMetricsMiddleware, metrics=engine.metrics)
    # POST /get_reward
    app.include_router(openrlhf.create_router(engine), responses=ERROR_RESPONSES)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation_errors(error.errors()))

    @app.exception_handler(HTTPException)
    async def _on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (unknown route, wrong method, a body it cannot decode) in the
        API's error format."""
        if error.status_code == 400:  # FastAPI's "error parsing the body": JSON that is not UTF-8
            message = "the body is not valid JSON (JSON is UTF-8 text)"
            return error_response(422, "invalid_request", message)
        kind = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
        return error_response(error.status_code, kind, str(error.detail), error.headers)

    @app.exception_handler(errors.RewardServiceError)
    async def _on_engine_error(request: Request, error: errors.RewardServiceError) -> JSONResponse:
        status, kind = ERROR_STATUS.get(type(error), (500, "internal"))
        headers = (
            {"Retry-After": str(error.retry_after_s)}
            if isinstance(error, errors.QueueFull)
            else None
        )
        return error_response(status, kind, str(error), headers)

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
    async def score(request: ScoreRequest) -> ScoreResponse:
        """Scores texts, or prompt/completion pairs, with one reward per item in order."""
        return await engine.score(request)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """Each model's name, labels, reward mapping, max_length and backend."""
        return ModelList(models=engine.model_infos())

    @app.get("/health/live")
    async def live() -> dict:
        """The process is up and answering."""
        return {"status": "live"}

    @app.get(
        "/health/ready", responses={503: {"description": "loading, or shutting down (SIGTERM)"}}
    )
    async def ready() -> JSONResponse:
        """Ready once every model is loaded and warmed up; not ready again once shutting down."""
        models = {name: engine.is_ready(name) for name in engine.specs}
        status = "shutting_down" if engine.shutting_down else "ready" if engine.ready else "loading"
        return JSONResponse({"status": status, "models": models}, 200 if engine.ready else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(engine.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


class BodySizeLimitMiddleware:
    """413 for a request body over `max_body_bytes`, without reading it: at once from its
    Content-Length, or, for a chunked body, as soon as the chunks read pass the limit. Pure ASGI."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            await self._read_chunked_then_call(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send, f"{int(declared)} bytes")
            return
        # Otherwise the HTTP parser delivers at most Content-Length bytes.
        await self.app(scope, receive, send)

    async def _read_chunked_then_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send, f"more than {self.max_body_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        status, kind = BODY_TOO_LARGE
        message = (
            f"the request body has {size}; this server takes at most {self.max_body_bytes} "
            "bytes: send fewer items per request"
        )
        # The unread body stays unread: the connection closes after this answer.
        response = error_response(status, kind, message, {"Connection": "close"})
        await response(scope, receive, send)


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
