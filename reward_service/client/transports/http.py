"""HTTP transport (httpx): POST /v1/score, and what each answer means for the retry loop."""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import Any

import httpx

# The server's error classes name the machine-readable types it sends with each error.
from reward_service import errors as wire
from reward_service.client.contract import (
    Chunk,
    ClientConfig,
    ItemLimitExceeded,
    Retryable,
    Scores,
)
from reward_service.client.errors import (
    BadRequest,
    ModelNotFound,
    NonFiniteReward,
    RewardClientError,
    ServerError,
    Unauthorized,
    UnexpectedResponse,
    UntrustedServer,
)

RETRYABLE_STATUS = {408, 429, 502, 503, 504}


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def timeout_header(timeout_s: float) -> dict[str, str]:
    """How long this attempt will wait: the server drops its items once no answer can arrive
    in time (reward_service/serving/abandonment.py)."""
    return {"X-Request-Timeout-Ms": str(max(1, round(timeout_s * 1000)))}


def score_body(chunk: Chunk, model: str | None) -> dict:
    body: dict = (
        {"texts": chunk.texts}
        if chunk.texts is not None
        else {"prompts": chunk.prompts, "completions": chunk.completions}
    )
    if model is not None:
        body["model"] = model
    return body


def retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds from now: either a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def scores_from(response: httpx.Response, url: str) -> Scores:
    """The rewards (and truncated count) of a 200, or the exception that says what to do about
    any other answer."""
    body = body_of(response, url)
    rewards = body.get("rewards")
    if not isinstance(rewards, list) or not all(
        reward is None or isinstance(reward, int | float) for reward in rewards
    ):
        raise _unexpected(response, url, "no list of rewards")
    truncated = body.get("truncated", 0)  # a server from before the field answers without it
    return Scores(rewards, truncated if isinstance(truncated, int) else 0)


def models_from(response: httpx.Response, url: str) -> list[dict[str, Any]]:
    """The `models` of a GET /v1/models answer."""
    models = body_of(response, url).get("models")
    if not isinstance(models, list):
        raise _unexpected(response, url, "no list of models")
    return models


def _unexpected(response: httpx.Response, url: str, what: str) -> UnexpectedResponse:
    # A proxy's login page, a load balancer's own 200, a server of another kind on the port.
    return UnexpectedResponse(
        f"HTTP {response.status_code} from {url} with {what} in its body (is something other "
        f"than the reward service answering?): {response.text[:200]!r}",
        status=response.status_code,
        endpoint=url,
    )


def body_of(response: httpx.Response, url: str) -> dict[str, Any]:
    """The JSON body of a 200, or the exception that says what to do about any other answer."""
    status = response.status_code
    if status == 200:
        try:
            body = response.json()
        except ValueError:
            raise _unexpected(response, url, "no JSON") from None
        if not isinstance(body, dict):
            raise _unexpected(response, url, "no JSON object")
        return body
    message = _error_message(response)
    if status >= 500 and _error_type(response) is None:
        # Every error the reward service sends is a JSON object naming its type; a 5xx without
        # one is a proxy's in front of it (Ray Serve's plain-text 500 when a replica dies under
        # a request, a load balancer's): another replica answers.
        raise Retryable(
            f"HTTP {status} from a proxy, not the reward service: {message}",
            retry_after_s(response.headers.get("retry-after")),
        )
    if status in RETRYABLE_STATUS:
        raise Retryable(
            f"HTTP {status}: {message}", retry_after_s(response.headers.get("retry-after"))
        )
    if status == 413:
        raise ItemLimitExceeded(
            message, url, too_many_items=_error_type(response) == wire.TooManyItems.error_type
        )
    error_type: type[RewardClientError] = (
        Unauthorized
        if status in (401, 403)
        else ModelNotFound
        if status == 404
        else BadRequest
        if 400 <= status < 500
        else NonFiniteReward
        if _error_type(response) == wire.NonFiniteReward.error_type
        else ServerError
    )
    raise error_type(f"HTTP {status} from {url}: {message}", status=status, endpoint=url)


def _error_type(response: httpx.Response) -> str | None:
    try:
        return response.json()["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


def _timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s)


def tls_verification(config: ClientConfig) -> ssl.SSLContext | bool:
    """How https:// servers are verified: against `ca_file` if given, else the system's CAs."""
    if config.ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(config.ca_file))


def transport_failure(error: httpx.TransportError, url: str) -> Exception:
    """What a request that got no answer becomes: UntrustedServer for a certificate that does
    not verify (ssl's SSLCertVerificationError, under httpcore's and httpx's wrappers), else
    Retryable (connection refused or reset, timeouts) for the retry loop."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return UntrustedServer(
                f"{url}'s TLS certificate did not verify ({cause.verify_message}); pass the CA "
                "that issued it as ca_file (the trainer's --reward-ca-file)",
                endpoint=url,
            )
        cause = cause.__cause__ or cause.__context__
    return Retryable(f"{type(error).__name__}: {error}")


def _limits(config: ClientConfig) -> httpx.Limits:
    return httpx.Limits(max_connections=max(config.max_concurrency, 10))


class HttpTransport:
    def __init__(self, config: ClientConfig) -> None:
        self.client = httpx.Client(
            headers=auth_headers(config.api_key),
            limits=_limits(config),
            verify=tls_verification(config),
        )

    def score(self, url: str, chunk: Chunk, model: str | None, timeout_s: float) -> Scores:
        try:
            response = self.client.post(
                f"{url}/v1/score",
                json=score_body(chunk, model),
                headers=timeout_header(timeout_s),
                timeout=_timeout(timeout_s),
            )
        except httpx.TransportError as error:
            raise transport_failure(error, url) from error
        return scores_from(response, url)

    def list_models(self, url: str, timeout_s: float) -> list[dict[str, Any]]:
        try:
            response = self.client.get(f"{url}/v1/models", timeout=_timeout(timeout_s))
        except httpx.TransportError as error:
            raise transport_failure(error, url) from error
        return models_from(response, url)

    def close(self) -> None:
        self.client.close()


class AsyncHttpTransport:
    def __init__(self, config: ClientConfig) -> None:
        self.client = httpx.AsyncClient(
            headers=auth_headers(config.api_key),
            limits=_limits(config),
            verify=tls_verification(config),
        )

    async def score(self, url: str, chunk: Chunk, model: str | None, timeout_s: float) -> Scores:
        try:
            response = await self.client.post(
                f"{url}/v1/score",
                json=score_body(chunk, model),
                headers=timeout_header(timeout_s),
                timeout=_timeout(timeout_s),
            )
        except httpx.TransportError as error:
            raise transport_failure(error, url) from error
        return scores_from(response, url)

    async def list_models(self, url: str, timeout_s: float) -> list[dict[str, Any]]:
        try:
            response = await self.client.get(f"{url}/v1/models", timeout=_timeout(timeout_s))
        except httpx.TransportError as error:
            raise transport_failure(error, url) from error
        return models_from(response, url)

    async def aclose(self) -> None:
        await self.client.aclose()
