"""The REST API's errors: the engine's error types mapped to HTTP statuses in one table, and the
one shape every error body takes."""

from __future__ import annotations

from collections import defaultdict

from fastapi.responses import JSONResponse

from reward_service import errors
from reward_service.engine.schemas import ErrorBody, ErrorResponse

# Engine error -> HTTP status, for the whole REST API; the body's `error.type` is the class's
# `error_type`, and anything unlisted is a 500.
ERROR_STATUS: dict[type[errors.RewardServiceError], int] = {
    errors.InvalidRequest: 422,
    errors.ItemTooLong: 422,
    errors.TooManyItems: 413,
    errors.TooManyCharacters: 413,
    errors.ModelNotFound: 404,
    errors.QueueFull: 429,
    errors.NotReady: 503,
    errors.ShuttingDown: 503,
    errors.DeadlineExceeded: 504,
    errors.NonFiniteReward: 500,
    errors.InferenceFailed: 500,
}
# Refused by middleware before any route runs: BodySizeLimitMiddleware and BodyBytesBudget.
BODY_TOO_LARGE = (413, "body_too_large")
TOO_MANY_BYTES_IN_FLIGHT = (429, "too_many_bytes_in_flight")


def error_response(
    status: int, kind: str, message: str, headers: dict | None = None
) -> JSONResponse:
    """Every REST error body, in the one shape the OpenAPI schema documents (ErrorResponse)."""
    body = ErrorResponse(error=ErrorBody(type=kind, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _error_responses() -> dict[int, dict]:
    """The OpenAPI `responses` of a scoring route: each status with every error type it carries."""
    kinds: dict[int, list[str]] = defaultdict(list)
    for error, status in ERROR_STATUS.items():
        kinds[status].append(error.error_type)
    for status, kind in (BODY_TOO_LARGE, TOO_MANY_BYTES_IN_FLIGHT):
        kinds[status].append(kind)
    return {
        status: {"model": ErrorResponse, "description": ", ".join(names)}
        for status, names in sorted(kinds.items())
    }


ERROR_RESPONSES = _error_responses()
