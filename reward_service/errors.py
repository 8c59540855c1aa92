"""Every error class of the service, and the two ways it words an error for a person.

Each error names its machine-readable type here; each transport maps the classes to its own
status codes in one table (serving/http_errors.py, serving/grpc.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar


class RewardServiceError(Exception):
    """Base class: the message is written for the person who sent the request or ran the command.

    `error_type` is the machine-readable name both transports send with the error (REST's
    `error.type`, gRPC's `reward-error-type` trailing metadata), so clients tell apart errors
    that share a status code; each transport maps the classes to its own codes."""

    error_type: ClassVar[str] = "internal"


class ModelLoadError(RewardServiceError):
    """A model folder or hub id could not be turned into a servable model."""


class InvalidRequest(RewardServiceError):
    """The request is malformed (HTTP 422, gRPC INVALID_ARGUMENT)."""

    error_type = "invalid_request"


class TooManyItems(RewardServiceError):
    """More items in one request than `max_items_per_request` (HTTP 413, gRPC INVALID_ARGUMENT)."""

    error_type = "too_many_items"


class TooManyCharacters(RewardServiceError):
    """More characters in one request than `max_chars_per_request` (HTTP 413
    `too_many_characters`, gRPC INVALID_ARGUMENT with that `reward-error-type`): the same items
    split over several requests are taken."""

    error_type = "too_many_characters"


class ModelNotFound(RewardServiceError):
    """The request names a model this server does not serve (HTTP 404, gRPC NOT_FOUND)."""

    error_type = "model_not_found"


class QueueFull(RewardServiceError):
    """Admitting the request would exceed `max_queue_items` (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""

    error_type = "queue_full"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(RewardServiceError):
    """The model is still loading or warming up (HTTP 503, gRPC UNAVAILABLE)."""

    error_type = "not_ready"


class DeadlineExceeded(RewardServiceError):
    """The caller's deadline passed before the items were scored; they were dropped unscored."""

    error_type = "deadline_exceeded"


class ItemTooLong(RewardServiceError):
    """An item has more characters than `max_chars_per_item` (HTTP 422, gRPC INVALID_ARGUMENT).

    Refused rather than truncated: truncation to the model's max_length happens on tokens, and a
    text this long is a mistake or an attack, not a long review."""

    error_type = "item_too_long"


class ShuttingDown(RewardServiceError):
    """The server is shutting down and accepts no new work (HTTP 503, gRPC UNAVAILABLE): retry on
    another replica. Requests accepted before the shutdown began are still answered."""

    error_type = "shutting_down"


class InferenceFailed(RewardServiceError):
    """The forward pass raised; the message names the cause (HTTP 500, gRPC INTERNAL)."""

    error_type = "inference_failed"


class NonFiniteReward(RewardServiceError):
    """The model gave a NaN or infinite reward for an item (HTTP 500 `non_finite_reward`, gRPC
    INTERNAL with `reward-error-type: non_finite_reward` in the trailing metadata). Only the
    requests holding such an item fail; the rest of its batch is answered. Sent as a number it
    would poison a trainer's running statistics (gRPC) or arrive as JSON null (REST)."""

    error_type = "non_finite_reward"


class GrpcBindError(RewardServiceError):
    """The gRPC port could not be bound (in use, or not an address of this machine)."""


class ExportError(RewardServiceError):
    """The model could not be exported, or the export does not reproduce its rewards."""


class MappingError(ValueError):
    """A reward mapping that cannot be read, merged or applied to a model; the message says why."""


class DataError(ValueError):
    """A training or evaluation file that cannot be read; the message names the file and line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line essays), or its type
    where the message is empty."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def describe_validation_errors(problems: Iterable[Mapping[str, Any]]) -> str:
    """One line for a person from pydantic's error list (`ValidationError.errors()`): each
    offending field with its problem, e.g. ``normalization.std: Input should be greater than 0``.
    A request body's leading "body" location is left out."""
    parts = []
    for problem in problems:
        if problem.get("type") == "json_invalid":
            position = problem.get("loc", ("body", "?"))[-1]
            parts.append(f"the body is not valid JSON (error at character {position})")
            continue
        location = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        message = problem.get("msg", "invalid value").removeprefix("Value error, ")
        if not location and problem.get("type") != "value_error":
            # A validator's own message says what it is about; "Input should be a valid
            # dictionary" needs saying that it is about the whole value.
            location = "(top level)"
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "the request is not valid"
