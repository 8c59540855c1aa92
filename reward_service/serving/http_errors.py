"""The REST API's errors: the engine's error types mapped to HTTP statuses in one table, and the
one shape every error body takes."""

from __future__ import annotations

from collections import defaultdict

from fastapi.responses import JSONResponse

from reward_service import errors
from reward_service.engine.schemas import ErrorBody, ErrorResponse

# Engine error -> (HTTP status, machine-readable type). One table for the whole REST API.
ERROR_STATUS: dict[type[errors.RewardServiceError], tuple[int, str]] = {
    errors.InvalidRequest: (422, "invalid_request"),
    errors.ItemTooLong: (422, "item_too_long"),
    errors.TooManyItems: (413, "too_many_items"),
    errors.TooManyCharacters: (413, "too_many_characters"),
    errors.ModelNotFound: (404, "model_not_found"),
    errors.QueueFull: (429, "queue_full"),
    errors.NotReady: (503, "not_ready"),
    errors.ShuttingDown: (503, "shutting_down"),
    errors.DeadlineExceeded: (504, "deadline_exceeded"),
    errors.NonFiniteReward: (500, "non_finite_reward"),
    errors.InferenceFailed: (500, "inference_failed"),
}
# Refused by BodySizeLimitMiddleware before any route runs.
BODY_TOO_LARGE = (413, "body_too_large")


def error_response(
    status: int, kind: str, message: str, headers: dict | None = None
) -> JSONResponse:
    """Every REST error body, in the one shape the OpenAPI schema documents (ErrorResponse)."""
    body = ErrorResponse(error=ErrorBody(type=kind, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


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
