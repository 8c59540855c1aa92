"""AsyncRewardClient: the asyncio twin of RewardClient, with the same options and errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from reward_service.client.base import (
    BaseRewardClient,
    Call,
    ScoreResult,
    make_transports,
    score_result,
    transport_kind,
)
from reward_service.client.contract import Chunk, ItemLimitExceeded, Retryable, Scores
from reward_service.client.errors import DeadlineExceeded, ServerError


class AsyncRewardClient(BaseRewardClient):
    """Scores texts on one or more reward-service endpoints; `await client.score(...)`.

        async with AsyncRewardClient(["http://a:8000", "http://b:8000"]) as client:
            rewards = await client.score(prompts=prompts, completions=completions)

    Same arguments, options and exceptions as RewardClient. At most `max_concurrency` requests
    of this client are in flight at once; the deadline is enforced on the whole call.
    """

    def __init__(self, url_or_urls: str | Sequence[str], **options) -> None:
        super().__init__(url_or_urls, **options)
        self._transports = make_transports(self.urls, self.config, asynchronous=True)
        self._slots = asyncio.Semaphore(self.config.max_concurrency)

    async def score(
        self,
        texts: Sequence[str] | None = None,
        *,
        prompts: Sequence[str] | None = None,
        completions: Sequence[str] | None = None,
        model: str | None = None,
    ) -> list[float]:
        """One reward per text (or per prompt/completion pair), in order."""
        result = await self.score_detailed(
            texts, prompts=prompts, completions=completions, model=model
        )
        return result.rewards

    async def score_detailed(
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
        tasks = [asyncio.ensure_future(self._score_in_slot(call, chunk, model)) for chunk in chunks]
        try:
            if call.deadline is None:
                answers = await asyncio.gather(*tasks)
            else:
                timeout_s = max(0.0, call.deadline - time.monotonic())
                answers = await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        except DeadlineExceeded:
            raise
        except TimeoutError:  # wait_for's: the deadline passed mid-request
            raise call.deadline_exceeded() from None
        finally:
            for task in tasks:
                task.cancel()
        return score_result(whole, list(zip(chunks, answers, strict=True)), call)

    async def _score_in_slot(self, call: Call, chunk: Chunk, model: str | None) -> Scores:
        async with self._slots:
            return await self._score_chunk(call, chunk, model)

    async def list_models(self) -> list[dict[str, Any]]:
        """Each served model's entry of GET /v1/models, as RewardClient.list_models."""
        return await self._with_retries(Call.start(self.config, self.pool), "list_models")

    async def _score_chunk(self, call: Call, chunk: Chunk, model: str | None) -> Scores:
        try:
            return await self._with_retries(call, "score", chunk, model)
        except ItemLimitExceeded as refusal:
            parts = [
                await self._score_chunk(call, part, model) for part in self._shrink(chunk, refusal)
            ]
            return Scores.joined(parts)

    async def _with_retries(self, call: Call, method: str, *args: Any) -> Any:
        """As RewardClient._with_retries, waiting with asyncio.sleep."""
        retry = 0
        failing_since: float | None = None  # time.monotonic() of this request's first failure
        failed_on: set[str] = set()  # endpoints that answered it with a server error
        while True:
            timeout_s = call.attempt_timeout_s()
            endpoint = self.pool.acquire()
            transport = self._transports[transport_kind(endpoint.url)]
            try:
                result = await getattr(transport, method)(endpoint.url, *args, timeout_s)
            except Retryable as error:
                self.pool.release(endpoint, healthy=False)
                retry += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                await asyncio.sleep(call.retry_delay_s(retry, endpoint, error, failing_since))
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

    async def aclose(self) -> None:
        for transport in self._transports.values():
            await transport.aclose()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
