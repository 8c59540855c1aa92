"""REST transport: a thin FastAPI layer over the engine. No model logic lives here."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service import errors, openrlhf
from reward_service.auth import ApiKeyMiddleware
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
    errors.TooManyItems: (413, "too_many_items"),
    errors.ModelNotFound: (404, "model_not_found"),
    errors.QueueFull: (429, "queue_full"),
    errors.NotReady: (503, "not_ready"),
    errors.DeadlineExceeded: (504, "deadline_exceeded"),
}


def error_response(
    status: int, kind: str, message: str, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"type": kind, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


ERROR_RESPONSES = {
    status: {"model": ErrorResponse, "description": kind} for status, kind in ERROR_STATUS.values()
}


def create_app(engine: Engine, *, api_key: str | None = None) -> FastAPI:
    """`api_key`: when set, every route but /health/* and /metrics needs it as a bearer token."""
    app = FastAPI(
        title="Reward service",
        description="Scores texts with reward models (sequence classifiers), batched across "
        "requests.",
        version="1",
    )
    if api_key:  # added first, so it runs inside the metrics middleware: refusals are counted
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(RequestMetricsMiddleware, metrics=engine.metrics)
    app.include_router(openrlhf.create_router(engine))  # POST /get_reward

    @app.exception_handler(RequestValidationError)
    async def _on_invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", describe_validation_errors(error.errors()))

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

    @app.get("/health/ready", responses={503: {"description": "still loading or warming up"}})
    async def ready() -> JSONResponse:
        """Ready once every model is loaded and warmed up."""
        models = {name: engine.is_ready(name) for name in engine.specs}
        status = "ready" if engine.ready else "loading"
        return JSONResponse({"status": status, "models": models}, 200 if engine.ready else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(engine.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app


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
