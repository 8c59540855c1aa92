"""What the sync and async clients share: configuration, request splitting, the retry policy and
endpoint choice. Only the waiting differs between them (threads and time.sleep, or tasks and
asyncio.sleep), so every decision is made here and both clients just act on it."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reward_service.client.contract import (
    Chunk,
    ClientConfig,
    ItemLimitExceeded,
    Retryable,
    Scores,
    check_items,
)
from reward_service.client.errors import (
    BadRequest,
    DeadlineExceeded,
    NonFiniteReward,
    ServerError,
    Unavailable,
)
from reward_service.client.transports.grpc import AsyncGrpcTransport, GrpcTransport
from reward_service.client.transports.http import AsyncHttpTransport, HttpTransport

logger = logging.getLogger("reward_service.client")

SCHEMES = ("http://", "https://", "grpc://", "grpcs://")


def backoff_delay_s(
    retry: int, base_s: float, max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """Wait before retry number `retry` (1, 2, ...): exponential, capped, with "equal jitter"
    (half the step fixed, half random), so clients that failed together do not retry together
    yet never hammer a restarting server with near-zero waits."""
    step_s = min(max_s, base_s * 2 ** (retry - 1))
    return step_s / 2 + rng() * step_s / 2


class CallAborted(Exception):  # noqa: N818
    """Another request of the same call failed for good; this one stops too."""


def whole_call(
    texts: Sequence[str] | None, prompts: Sequence[str] | None, completions: Sequence[str] | None
) -> Chunk:
    """The caller's input checked and held as one chunk (split before sending)."""
    try:
        check_items(texts, prompts, completions)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    if texts is None:
        return Chunk(0, prompts=list(prompts or ()), completions=list(completions or ()))
    return Chunk(0, texts=list(texts))


@dataclass
class Endpoint:
    url: str
    outstanding: int = 0
    failures: int = 0  # consecutive
    down_until: float = 0.0  # time.monotonic(); avoided until then


class EndpointPool:
    """Least outstanding requests, ties taken in turn; an endpoint that fails is avoided for a
    cooldown (doubling with each consecutive failure) and taken back once it answers again.
    Thread-safe: the sync client's worker threads share it."""

    def __init__(
        self, urls: Sequence[str], cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.endpoints = [Endpoint(url) for url in urls]
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._turn = 0
        self._lock = threading.Lock()

    def acquire(self) -> Endpoint:
        with self._lock:
            now = self.clock()
            up = [endpoint for endpoint in self.endpoints if endpoint.down_until <= now]
            # All down: try the one due back soonest rather than not trying at all.
            candidates = up or [min(self.endpoints, key=lambda endpoint: endpoint.down_until)]
            count = len(self.endpoints)
            self._turn += 1
            chosen = min(
                candidates,
                key=lambda e: (e.outstanding, (self.endpoints.index(e) - self._turn) % count),
            )
            chosen.outstanding += 1
            return chosen

    def release(self, endpoint: Endpoint, *, healthy: bool) -> None:
        with self._lock:
            endpoint.outstanding -= 1
            if healthy:
                endpoint.failures, endpoint.down_until = 0, 0.0
                return
            endpoint.failures += 1
            backoff = self.cooldown_s * min(2 ** (endpoint.failures - 1), 8)
            endpoint.down_until = self.clock() + backoff

    def another_is_up(self, endpoint: Endpoint) -> bool:
        with self._lock:
            now = self.clock()
            return any(e is not endpoint and e.down_until <= now for e in self.endpoints)


@dataclass
class Call:
    """One score() call: its deadline, and whether it has been given up."""

    config: ClientConfig
    pool: EndpointPool
    deadline: float | None = None  # time.monotonic()
    aborted: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, config: ClientConfig, pool: EndpointPool) -> Call:
        deadline = None if config.deadline_s is None else time.monotonic() + config.deadline_s
        return cls(config, pool, deadline)

    def attempt_timeout_s(self) -> float:
        """This attempt's timeout: the per-request timeout, or less if the deadline is nearer."""
        if self.aborted.is_set():
            raise CallAborted
        if self.deadline is None:
            return self.config.timeout_s
        remaining_s = self.deadline - time.monotonic()
        if remaining_s <= 0:
            raise self.deadline_exceeded()
        return min(self.config.timeout_s, remaining_s)

    def retry_delay_s(
        self, retry: int, endpoint: Endpoint, error: Retryable, failing_since: float
    ) -> float:
        """How long to wait before retry number `retry` of a request whose attempts have failed
        since `failing_since` (time.monotonic()), or the error that ends the call."""
        config = self.config
        if config.max_retries is not None and retry > config.max_retries:
            raise Unavailable(
                f"gave up after {retry} attempts; last: {error}", endpoint=endpoint.url
            ) from error
        if self.pool.another_is_up(endpoint):
            delay_s = 0.0  # fail over at once; backing off is for when every endpoint is down
        else:
            delay_s = backoff_delay_s(retry, config.backoff_base_s, config.backoff_max_s)
        if error.retry_after_s is not None:
            # Capped: a proxy's or a confused server's "Retry-After: 86400" must not park a run.
            delay_s = max(delay_s, min(error.retry_after_s, config.retry_after_max_s))
        now = time.monotonic()
        budget_s = config.retry_budget_s
        if budget_s is not None and now + delay_s > failing_since + budget_s:
            raise Unavailable(
                f"gave up after {retry} attempts in {now - failing_since:.0f} s (retry_budget_s = "
                f"{budget_s:g}); last: {error}",
                endpoint=endpoint.url,
            ) from error
        if self.deadline is not None and now + delay_s >= self.deadline:
            raise self.deadline_exceeded() from error
        logger.info("retry %d in %.2f s: %s (%s)", retry, delay_s, error, endpoint.url)
        return delay_s

    def fails_over(self, endpoint: Endpoint, error: ServerError, failed_on: set[str]) -> bool:
        """Whether a request that got `error` (HTTP 500, gRPC INTERNAL) from `endpoint` should be
        sent to another endpoint instead of failing: one replica's broken model, driver or
        memory is not another's. Each endpoint is tried once; where none is left, it fails."""
        failed_on.add(endpoint.url)
        if not any(url not in failed_on for url in (e.url for e in self.pool.endpoints)):
            return False
        if not self.pool.another_is_up(endpoint):
            return False
        logger.info("failing over from %s: %s", endpoint.url, error)
        return True

    def deadline_exceeded(self) -> DeadlineExceeded:
        return DeadlineExceeded(f"the call's deadline of {self.config.deadline_s} s passed")


def transport_kind(url: str) -> str:
    return "grpc" if url.startswith(("grpc://", "grpcs://")) else "http"


def make_transports(urls: Sequence[str], config: ClientConfig, *, asynchronous: bool) -> dict:
    """One transport per kind the endpoints use."""
    transports: dict = {}
    for kind in {transport_kind(url) for url in urls}:
        if kind == "grpc":
            transports[kind] = (AsyncGrpcTransport if asynchronous else GrpcTransport)(config)
        else:
            transports[kind] = (AsyncHttpTransport if asynchronous else HttpTransport)(config)
    return transports


def parse_urls(url_or_urls: str | Sequence[str]) -> list[str]:
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    if not urls:
        raise ValueError("give at least one endpoint URL")
    for url in urls:
        if not url.startswith(SCHEMES):
            raise ValueError(
                f"endpoint {url!r} needs a scheme: http://host:port, https://..., "
                "grpc://host:port or grpcs://host:port (TLS)"
            )
    return [url.rstrip("/") for url in urls]


class BaseRewardClient:
    """Configuration, splitting and the learned item limit; see RewardClient for the API."""

    def __init__(self, url_or_urls: str | Sequence[str], **options) -> None:
        self.urls = parse_urls(url_or_urls)
        self.config = ClientConfig(**options)
        self.pool = EndpointPool(self.urls, self.config.endpoint_cooldown_s)
        self._items_per_request = self.config.max_items_per_request
        self._limit_lock = threading.Lock()

    @property
    def items_per_request(self) -> int:
        """Items sent in one request: the configured limit, or less once a server said so."""
        return self._items_per_request

    def _plan(
        self,
        texts: Sequence[str] | None,
        prompts: Sequence[str] | None,
        completions: Sequence[str] | None,
    ) -> tuple[Chunk, list[Chunk]]:
        whole = whole_call(texts, prompts, completions)
        return whole, whole.split(self._items_per_request) if whole.size else []

    def _shrink(self, chunk: Chunk, refusal: ItemLimitExceeded) -> list[Chunk]:
        """The server refused `chunk` as too large: split it in halves. Past the server's item
        limit, also remember the halved size (413 names no limit a client can rely on); a body
        too large for one request says nothing about the next, whose texts may be short."""
        if chunk.size == 1:
            raise BadRequest(
                f"the server refuses even one item per request: {refusal}",
                status=413,
                endpoint=refusal.url,
            )
        half = chunk.size // 2
        if not refusal.too_many_items:
            return chunk.split(half)
        with self._limit_lock:
            self._items_per_request = min(self._items_per_request, half)
            logger.info(
                "server %s takes fewer items per request; now sending at most %d",
                refusal.url,
                self._items_per_request,
            )
            return chunk.split(self._items_per_request)

    def _model(self, model: str | None) -> str | None:
        return model if model is not None else self.config.model


@dataclass(frozen=True)
class ScoreResult:
    """What score_detailed() answers: the rewards, in order; how many items the servers
    truncated to their model's max_length; the call's wall time, retries and all."""

    rewards: list[float]
    truncated: int
    elapsed_s: float


def score_result(whole: Chunk, parts: Sequence[tuple[Chunk, Scores]], call: Call) -> ScoreResult:
    """The answers to a call's requests as one result (see assemble for the checks)."""
    rewards = assemble(whole, [(chunk, scores.rewards) for chunk, scores in parts])
    truncated = sum(scores.truncated for _, scores in parts)
    return ScoreResult(rewards, truncated, time.monotonic() - call.started)


def assemble(whole: Chunk, parts: Sequence[tuple[Chunk, list[float | None]]]) -> list[float]:
    """Rewards in the caller's order, checking every item got exactly one, and a finite one."""
    rewards: list[float | None] = [None] * whole.size
    for chunk, chunk_rewards in parts:
        if len(chunk_rewards) != chunk.size:
            raise Unavailable(f"a server answered {len(chunk_rewards)} rewards for {chunk.size}")
        # A server that does not refuse non-finite rewards itself sends JSON null or a NaN.
        for offset, reward in enumerate(chunk_rewards):
            if reward is None or not math.isfinite(reward):
                raise NonFiniteReward(
                    f"the reward model gave a non-finite reward ({reward}) for item "
                    f"{chunk.start + offset}"
                )
        rewards[chunk.start : chunk.start + chunk.size] = chunk_rewards
    if any(reward is None for reward in rewards):
        raise Unavailable("some items came back unscored")  # a bug, were it ever to happen
    return rewards  # type: ignore[return-value]
