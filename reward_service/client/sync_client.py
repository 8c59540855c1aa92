"""RewardClient: the blocking client. Requests of one call run on a small thread pool."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

from reward_service.client.base import (
    BaseRewardClient,
    Call,
    CallAborted,
    ScoreResult,
    make_transports,
    score_result,
    transport_kind,
)
from reward_service.client.contract import Chunk, ItemLimitExceeded, Retryable, Scores
from reward_service.client.errors import ServerError


class RewardClient(BaseRewardClient):
    """Scores texts on one or more reward-service endpoints; blocking.

        with RewardClient("http://127.0.0.1:8000") as client:
            rewards = client.score(texts=["great movie", "dull"])

    `url_or_urls`: one URL or a list (http://, https://, grpc:// or grpcs://host:port); load
    goes to the endpoint with the fewest requests in flight, and away from one that fails until
    it answers again. Options (see ClientConfig): timeout_s, deadline_s, retry_budget_s,
    max_retries, backoff_base_s, backoff_max_s, retry_after_max_s, max_items_per_request,
    max_concurrency, endpoint_cooldown_s, api_key, model, ca_file.
    Thread-safe: one client may serve many threads.
    """

    def __init__(self, url_or_urls: str | Sequence[str], **options) -> None:
        super().__init__(url_or_urls, **options)
        self._transports = make_transports(self.urls, self.config, asynchronous=False)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    def score(
        self,
        texts: Sequence[str] | None = None,
        *,
        prompts: Sequence[str] | None = None,
        completions: Sequence[str] | None = None,
        model: str | None = None,
    ) -> list[float]:
        """One reward per text (or per prompt/completion pair), in order. Raises BadRequest,
        Unauthorized, ServerError, Unavailable or DeadlineExceeded (all RewardClientError)."""
        return self.score_detailed(
            texts, prompts=prompts, completions=completions, model=model
        ).rewards

    def score_detailed(
        self,
        texts: Sequence[str] | None = None,
        *,
        prompts: Sequence[str] | None = None,
        completions: Sequence[str] | None = None,
        model: str | None = None,
    ) -> ScoreResult:
        """As score(), with how many items were truncated and how long the call took."""
        whole, chunks = self._plan(texts, prompts, completions)
        call = Call.start(self.config, self.pool)
        model = self._model(model)
        if len(chunks) <= 1:
            return score_result(
                whole, [(chunk, self._score_chunk(call, chunk, model)) for chunk in chunks], call
            )
        futures: dict[Future, Chunk] = {
            self._workers().submit(self._score_chunk, call, chunk, model): chunk for chunk in chunks
        }
        try:
            parts = [(futures[future], future.result()) for future in as_completed(futures)]
        except BaseException:
            call.aborted.set()  # the others stop at their next attempt or wait
            for future in futures:
                future.cancel()
            raise
        return score_result(whole, parts, call)

    def list_models(self) -> list[dict[str, Any]]:
        """Each served model's entry of GET /v1/models (name, labels, reward mapping, ...), from
        the first endpoint that answers; retried as score() is."""
        return self._with_retries(Call.start(self.config, self.pool), "list_models")

    def _score_chunk(self, call: Call, chunk: Chunk, model: str | None) -> Scores:
        try:
            return self._with_retries(call, "score", chunk, model)
        except ItemLimitExceeded as refusal:
            parts = self._shrink(chunk, refusal)
            return Scores.joined([self._score_chunk(call, part, model) for part in parts])

    def _with_retries(self, call: Call, method: str, *args: Any) -> Any:
        """`transport.<method>(url, *args, timeout_s)` on the endpoint the pool picks, retried
        on Retryable verdicts (on another endpoint where one is up) within the call's limits."""
        retry = 0
        failing_since: float | None = None  # time.monotonic() of this request's first failure
        failed_on: set[str] = set()  # endpoints that answered it with a server error
        while True:
            timeout_s = call.attempt_timeout_s()
            endpoint = self.pool.acquire()
            transport = self._transports[transport_kind(endpoint.url)]
            try:
                result = getattr(transport, method)(endpoint.url, *args, timeout_s)
            except Retryable as error:
                self.pool.release(endpoint, healthy=False)
                retry += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                if call.aborted.wait(call.retry_delay_s(retry, endpoint, error, failing_since)):
                    raise CallAborted from error
                continue
            except ServerError as error:
                if call.fails_over(endpoint, error, failed_on):
                    self.pool.release(endpoint, healthy=False)
                    continue
                self.pool.release(endpoint, healthy=True)
                raise
            except BaseException:
                self.pool.release(endpoint, healthy=True)
                raise
            self.pool.release(endpoint, healthy=True)
            return result

    def _workers(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.config.max_concurrency, thread_name_prefix="reward-client"
                )
            return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for transport in self._transports.values():
            transport.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
