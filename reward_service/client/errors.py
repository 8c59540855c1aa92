"""The client's exception hierarchy: one base, and a type per thing a caller may act on.

RewardClientError
├── BadRequest (also a ValueError)   the server refused the request itself; never retried
│   └── ModelNotFound                no such model on the server
├── Unauthorized                     missing or wrong API key; never retried
├── UntrustedServer                  the server's TLS certificate failed verification; never retried
├── ServerError                      the server failed in a way a retry would not fix (500)
│   ├── NonFiniteReward              the model gave NaN or infinity for an item
│   └── UnexpectedResponse           an answer that is not the reward service's
├── Unavailable                      retries ran out: endpoints down, overloaded or restarting
└── DeadlineExceeded (also a TimeoutError)   the call's overall deadline passed
"""

from __future__ import annotations


class RewardClientError(Exception):
    """Base class. `status` is the HTTP status or gRPC code name where a server answered."""

    def __init__(
        self, message: str, *, status: int | str | None = None, endpoint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.endpoint = endpoint


class BadRequest(RewardClientError, ValueError):
    """The request is malformed or inconsistent (HTTP 4xx, gRPC INVALID_ARGUMENT...)."""


class ModelNotFound(BadRequest):
    """The request names a model the server does not serve (HTTP 404, gRPC NOT_FOUND)."""


class Unauthorized(RewardClientError):
    """The server wants an API key and got none or a wrong one (HTTP 401/403, UNAUTHENTICATED)."""


class UntrustedServer(RewardClientError):
    """The server's TLS certificate did not verify against `ca_file` (or the system's CAs when
    none is given), or names another host. Raised at once: waiting does not make a certificate
    trusted, and retrying for the whole retry budget would only hide a wrong `ca_file`."""


class ServerError(RewardClientError):
    """The server answered with an error that is not worth retrying (HTTP 500, gRPC INTERNAL)."""


class NonFiniteReward(ServerError):
    """The reward model gave a NaN or infinite reward: refused by the server (HTTP 500 of type
    `non_finite_reward`, gRPC INTERNAL with that `reward-error-type`), or found in an answer."""


class UnexpectedResponse(ServerError):
    """A 200 whose body is not a reward answer: something else answers at that address."""


class Unavailable(RewardClientError):
    """Every retry failed on connection errors, timeouts, 429 or 502/503/504; see __cause__."""


class DeadlineExceeded(RewardClientError, TimeoutError):
    """The call's overall deadline passed before every item was scored."""
