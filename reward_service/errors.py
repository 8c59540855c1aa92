"""The engine's error types. Each transport maps them to its own status codes in one place."""

from __future__ import annotations


class RewardServiceError(Exception):
    """Base class: the message is written for the person who sent the request or ran the command."""


class ModelLoadError(RewardServiceError):
    """A model folder or hub id could not be turned into a servable model."""


class InvalidRequest(RewardServiceError):
    """The request is malformed (HTTP 422, gRPC INVALID_ARGUMENT)."""


class TooManyItems(RewardServiceError):
    """More items in one request than `max_items_per_request` (HTTP 413, gRPC INVALID_ARGUMENT)."""


class ModelNotFound(RewardServiceError):
    """The request names a model this server does not serve (HTTP 404, gRPC NOT_FOUND)."""


class QueueFull(RewardServiceError):
    """Admitting the request would exceed `max_queue_items` (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(RewardServiceError):
    """The model is still loading or warming up (HTTP 503, gRPC UNAVAILABLE)."""


class DeadlineExceeded(RewardServiceError):
    """The caller's deadline passed before the items were scored; they were dropped unscored."""


class ItemTooLong(RewardServiceError):
    """An item has more characters than `max_chars_per_item` (HTTP 422, gRPC INVALID_ARGUMENT).

    Refused rather than truncated: truncation to the model's max_length happens on tokens, and a
    text this long is a mistake or an attack, not a long review."""


class ShuttingDown(RewardServiceError):
    """The server is shutting down and accepts no new work (HTTP 503, gRPC UNAVAILABLE): retry on
    another replica. Requests accepted before the shutdown began are still answered."""
