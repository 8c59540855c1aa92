"""REST transport: a thin FastAPI layer over the engine. No model logic lives here."""

from __future__ import annotations

import time
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from reward_service import errors
from reward_service.docs_pages import add_offline_docs
from reward_service.engine.engine import Engine
from reward_service.engine.schemas import ModelList, ScoreRequest, ScoreResponse
from reward_service.errors import describe_validation_errors
from reward_service.serving import kserve, openrlhf, tei
from reward_service.serving.abandonment import (
    CLIENT_CLOSED_REQUEST,
    ClientGone,
    request_deadline,
    unless_abandoned,
)
from reward_service.serving.http_errors import ERROR_RESPONSES, ERROR_STATUS, error_response
from reward_service.serving.middleware import (
    ApiKeyMiddleware,
    BodyBytesBudget,
    BodySizeLimitMiddleware,
    CloseConnectionsWhenShuttingDown,
    RequestMetricsMiddleware,
)
from reward_service.serving.settings import ServeSettings

DEFAULT_MAX_BODY_BYTES = ServeSettings.model_fields["max_body_bytes"].default
DEFAULT_MAX_BODY_BYTES_IN_FLIGHT = ServeSettings.model_fields["max_body_bytes_in_flight"].default


def create_app(
    engine: Engine,
    *,
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_body_bytes_in_flight: int = DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
) -> FastAPI:
    """`api_key`: when set, every route but /health/*, /v2/health/* and /metrics needs it as a
    bearer token.
    `max_body_bytes`: larger request bodies get 413 before they are read.
    `max_body_bytes_in_flight`: the bodies being received at once, in all; past it 429."""
    app = FastAPI(
        title="Reward service",
        description="Scores texts with reward models (sequence classifiers), batched across "
        "requests.",
        version="1",
        # /docs from the files a package ships, not a CDN: it works offline (docs_pages.py)
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app)
    # The last added runs first: metrics count every answer, refusals included; the key is
    # checked before a body is read or takes a part of the budget.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(
        BodyBytesBudget,
        budget_bytes=max_body_bytes_in_flight,
        max_body_bytes=max_body_bytes,
        metrics=engine.metrics,
    )
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    app.add_middleware(CloseConnectionsWhenShuttingDown, engine=engine)
    app.add_middleware(RequestMetricsMiddleware, metrics=engine.metrics)
    # POST /get_reward
    app.include_router(openrlhf.create_router(engine), responses=ERROR_RESPONSES)
    # /v2/...: the Open Inference Protocol (KServe v2, Triton's clients), with its own errors
    app.include_router(kserve.create_router(engine))
    # /predict, /rerank, /info, /health (and POST /): Text Embeddings Inference's routes
    app.include_router(tei.create_router(engine), responses=ERROR_RESPONSES)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        message = describe_validation_errors(error.errors())
        return error_response(422, errors.InvalidRequest.error_type, message)

    @app.exception_handler(HTTPException)
    async def _on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        """FastAPI's own refusals (unknown route, wrong method, a body it cannot decode) in the
        API's error format."""
        if error.status_code == 400:  # FastAPI's "error parsing the body": JSON that is not UTF-8
            message = "the body is not valid JSON (JSON is UTF-8 text)"
            return error_response(422, errors.InvalidRequest.error_type, message)
        kind = HTTPStatus(error.status_code).phrase.lower().replace(" ", "_")
        return error_response(error.status_code, kind, str(error.detail), error.headers)

    @app.exception_handler(errors.RewardServiceError)
    async def _on_engine_error(request: Request, error: errors.RewardServiceError) -> JSONResponse:
        status = ERROR_STATUS.get(type(error), 500)
        headers = (
            {"Retry-After": str(error.retry_after_s)}
            if isinstance(error, errors.QueueFull)
            else None
        )
        return error_response(status, error.error_type, str(error), headers)

    @app.exception_handler(ClientGone)
    async def _on_client_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    @app.post("/v1/score", response_model=ScoreResponse, responses=ERROR_RESPONSES)
    async def score(body: ScoreRequest, request: Request) -> ScoreResponse:
        """Scores texts, or prompt/completion pairs, with one reward per item in order.
        `X-Request-Timeout-Ms`: items not scored within it are dropped (504)."""
        deadline = request_deadline(request)
        return await unless_abandoned(request, engine.score(body, deadline=deadline))

    serving_since = int(time.time())  # `created` of each model in the OpenAI-style list

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        """Each model's name, labels, reward mapping, max_length and backend (`models`); the
        same models as the OpenAI API lists them (`object`, `data`: its SDK's models.list())."""
        return ModelList.of(engine.model_infos(), created=serving_since)

    @app.get("/health/live")
    async def live() -> dict:
        """The process is up and answering."""
        return {"status": "live"}

    @app.get(
        "/health/ready",
        responses={
            503: {"description": "loading, stalled (a model stopped answering) or shutting down"}
        },
    )
    async def ready() -> JSONResponse:
        """Ready once every model is loaded and warmed up, for as long as every one answers;
        not ready while one is stalled, nor once shutting down."""
        models = {name: engine.is_ready(name) for name in engine.specs}
        body: dict = {"models": models}
        if engine.shutting_down:
            body["status"] = "shutting_down"
        elif problems := engine.problems():
            body.update(status="stalled", problems=problems)
        else:
            body["status"] = "ready" if all(models.values()) else "loading"
        return JSONResponse(body, 200 if body["status"] == "ready" else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(engine.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return app
