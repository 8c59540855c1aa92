"""One model's queue: admits requests, forms batches across them, runs them, reassembles results.

Items from every request (and every transport) wait in one queue per model. When the model is
free, the oldest waiting item opens a batch and the queued items closest to it in length fill it,
up to `max_batch_size` items and `max_batch_tokens` padded tokens, so padding stays small and no
item waits behind an endless stream of better-fitting ones. Tokenisation and the forward pass run
in worker threads; the event loop only moves items around.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from reward_service.config import BatchingConfig
from reward_service.errors import DeadlineExceeded, QueueFull, RewardServiceError
from reward_service.loading import LoadedModel
from reward_service.metrics import Metrics
from reward_service.tokenization import EncodedText

logger = logging.getLogger(__name__)

# Requests up to this many characters are tokenised on the event loop: for them (a few hundred
# tokens, well under a millisecond) the two thread switches of handing the work to the tokenizer
# thread cost more than the work itself; larger ones go to that thread.
INLINE_TOKENIZE_MAX_CHARS = 2048
# How far down the queue a batch looks for items of similar length; bounds the work per batch.
GROUPING_WINDOW_BATCHES = 8
# Past this many queued items, lengths vary little within a batch's reach: skip the cost search.
COST_SEARCH_WINDOW_BATCHES = 4


class ForwardCostModel:
    """Fits forward time = per-batch cost + per-token cost x padded tokens over recent batches.

    Measured, not assumed, because it decides the best batches: on a CPU a padded token costs as
    much as a real one (MiniLM-L6 on 2 cores: a batch costs about 20 tokens' worth), so padding
    short items up to a long one can cost more than a second batch; on a GPU the per-batch cost
    dominates and full batches win.
    """

    DECAY = 0.98  # weight of the previous observation: about the last 50 batches count
    MIN_BATCHES = 8

    def __init__(self) -> None:
        self._weight = self._sum_x = self._sum_y = self._sum_xx = self._sum_xy = 0.0
        self._batches = 0

    def observe(self, padded_tokens: int, seconds: float) -> None:
        decay = self.DECAY
        self._weight = self._weight * decay + 1
        self._sum_x = self._sum_x * decay + padded_tokens
        self._sum_y = self._sum_y * decay + seconds
        self._sum_xx = self._sum_xx * decay + padded_tokens * padded_tokens
        self._sum_xy = self._sum_xy * decay + padded_tokens * seconds
        self._batches += 1

    @property
    def per_batch_tokens(self) -> float:
        """A batch's fixed cost in padded tokens; infinite (so batches fill) until it is known."""
        if self._batches < self.MIN_BATCHES:
            return math.inf
        mean_x, mean_y = self._sum_x / self._weight, self._sum_y / self._weight
        variance = self._sum_xx / self._weight - mean_x * mean_x
        if variance < (0.2 * mean_x) ** 2:  # batches too alike in size for a reliable fit
            return math.inf
        per_token = (self._sum_xy / self._weight - mean_x * mean_y) / variance
        if per_token <= 0:
            return math.inf
        return max(mean_y - per_token * mean_x, 0.0) / per_token


class InferenceFailed(RewardServiceError):
    """The forward pass raised; the message names the cause (HTTP 500, gRPC INTERNAL)."""


@dataclass(eq=False, slots=True)
class _PendingRequest:
    future: asyncio.Future
    rewards: np.ndarray
    raw: list[np.ndarray | None] | None
    remaining: int
    deadline: float | None  # time.monotonic() seconds


@dataclass(eq=False, slots=True)
class _QueuedItem:
    encoded: EncodedText
    request: _PendingRequest
    index: int
    enqueued_at: float

    @property
    def length(self) -> int:
        return len(self.encoded.input_ids)


@dataclass(frozen=True, slots=True)
class ScoredItems:
    rewards: list[float]
    raw: list[list[float]] | None
    truncated: int


def _characters(inputs: Sequence[str] | Sequence[tuple[str, str]]) -> int:
    return sum(len(item) if isinstance(item, str) else len(item[0]) + len(item[1])
               for item in inputs)  # fmt: skip


class ModelQueue:
    def __init__(
        self,
        model: LoadedModel,
        batching: BatchingConfig,
        metrics: Metrics,
        tokenize_executor: Executor,
        compute_executor: Executor,
    ) -> None:
        """`compute_executor` runs the forward passes: a one-thread executor (forward passes never
        overlap or fight over cores), shared by every model of a process (see Engine)."""
        self.model = model
        self.batching = batching
        self._name = model.spec.name
        self._metrics = metrics
        self._tokenize_executor = tokenize_executor
        self._compute_executor = compute_executor
        self._queue: list[_QueuedItem] = []
        self._admitted_items = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._forward_cost = ForwardCostModel()
        self._in_forward: list[_QueuedItem] = []  # the batch the model thread is running
        self._aborted_with: Exception | None = None  # set by abort(): no more work is queued
        self._last_forward: tuple[int, float] = (0, 0.0)  # (padded tokens, seconds), from _infer

    # -- admission -------------------------------------------------------------------------

    async def submit(
        self,
        inputs: Sequence[str] | Sequence[tuple[str, str]],
        *,
        return_raw: bool = False,
        deadline: float | None = None,
    ) -> ScoredItems:
        """Scores `inputs` in order; raises QueueFull instead of queueing past the limit."""
        count = len(inputs)
        if self._admitted_items + count > self.batching.max_queue_items:
            self._metrics.requests_rejected.labels(self._name).inc()
            raise QueueFull(
                f"model {self._name!r} has {self._admitted_items} items in flight and admits at "
                f"most {self.batching.max_queue_items}: retry shortly",
                retry_after_s=1,
            )
        self._admit(count)
        loop = asyncio.get_running_loop()
        try:
            if _characters(inputs) <= INLINE_TOKENIZE_MAX_CHARS:
                encoded = self.model.encoder.encode(inputs)
            else:
                encoded = await loop.run_in_executor(
                    self._tokenize_executor, self.model.encoder.encode, inputs
                )
        except BaseException:
            self._admit(-count)
            raise
        if self._aborted_with is not None:  # aborted while this request was being tokenized
            self._admit(-count)
            raise self._aborted_with
        request = _PendingRequest(
            future=loop.create_future(),
            rewards=np.empty(count, dtype=np.float64),
            raw=[None] * count if return_raw else None,
            remaining=count,
            deadline=deadline,
        )
        now = time.monotonic()
        self._queue.extend(
            _QueuedItem(item, request, index, now) for index, item in enumerate(encoded)
        )
        self._metrics.queue_depth.labels(self._name).set(len(self._queue))
        self._wakeup.set()
        await request.future
        truncated = sum(item.truncated for item in encoded)
        if truncated:
            self._metrics.items_truncated.labels(self._name).inc(truncated)
        raw = [row.tolist() for row in request.raw] if request.raw is not None else None
        return ScoredItems(request.rewards.tolist(), raw, truncated)

    def _admit(self, count: int) -> None:
        self._admitted_items += count
        self._metrics.admitted_items.labels(self._name).set(self._admitted_items)

    # -- the batching loop -----------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"batcher-{self._name}"
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.batching.max_wait_ms > 0:
                await self._wait_for_fuller_batch()
            batch = self._take_batch()
            if not batch:
                continue
            self._in_forward = batch
            try:
                rewards, logits = await loop.run_in_executor(
                    self._compute_executor, self._infer, batch
                )
            except Exception as error:  # keep serving: fail only this batch's requests
                logger.exception("forward pass failed for model %s", self._name)
                self._fail(batch, InferenceFailed(f"the forward pass failed: {error}"))
                continue
            finally:
                self._in_forward = []
            self._forward_cost.observe(*self._last_forward)
            self._deliver(batch, rewards, logits)

    async def _wait_for_fuller_batch(self) -> None:
        close_at = self._queue[0].enqueued_at + self.batching.max_wait_ms / 1000
        while len(self._queue) < self.batching.max_batch_size:
            remaining_s = close_at - time.monotonic()
            if remaining_s <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining_s)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_QueuedItem]:
        self._drop_dead_items()
        if not self._queue:
            return []
        window = self._queue[: self.batching.max_batch_size * GROUPING_WINDOW_BATCHES]
        oldest = window[0]
        per_batch_tokens = self._forward_cost.per_batch_tokens
        if not math.isinf(per_batch_tokens) and len(window) <= (
            self.batching.max_batch_size * COST_SEARCH_WINDOW_BATCHES
        ):
            batch = self._cheapest_batch_with(oldest, window, per_batch_tokens)
        else:
            batch = self._closest_in_length(oldest, window)
        chosen = {id(item) for item in batch}
        self._queue = [item for item in self._queue if id(item) not in chosen]
        self._metrics.queue_depth.labels(self._name).set(len(self._queue))
        return batch

    def _closest_in_length(
        self, oldest: _QueuedItem, window: list[_QueuedItem]
    ) -> list[_QueuedItem]:
        """The oldest item and the items closest to it in length, as many as the limits allow."""
        batch = [oldest]
        longest = oldest.length
        for item in sorted(window[1:], key=lambda item: abs(item.length - oldest.length)):
            if len(batch) == self.batching.max_batch_size:
                break
            candidate_longest = max(longest, item.length)
            if candidate_longest * (len(batch) + 1) > self.batching.max_batch_tokens:
                continue
            batch.append(item)
            longest = candidate_longest
        return batch

    def _cheapest_batch_with(
        self, oldest: _QueuedItem, window: list[_QueuedItem], per_batch_tokens: float
    ) -> list[_QueuedItem]:
        """The oldest item's batch in the cheapest split of `window` into batches.

        Items sorted by length are cut into runs, each run one batch costing `per_batch_tokens`
        plus its padded tokens; the least total cost is found by dynamic programming. This keeps
        short items out of long items' batches where the padding would cost more than a batch.
        """
        limits = self.batching
        items = sorted(window, key=lambda item: item.length)
        least = [0.0] + [math.inf] * len(items)  # least[end]: cheapest split of items[:end]
        cut = [0] * (len(items) + 1)  # where the last batch of that split starts
        for end in range(1, len(items) + 1):
            longest = items[end - 1].length  # sorted, so the run's last item is its longest
            for start in range(end - 1, max(0, end - limits.max_batch_size) - 1, -1):
                if longest * (end - start) > limits.max_batch_tokens and start < end - 1:
                    break
                cost = least[start] + per_batch_tokens + longest * (end - start)
                if cost < least[end]:
                    least[end], cut[end] = cost, start
        end = len(items)
        while True:
            start = cut[end]
            if any(item is oldest for item in items[start:end]):
                return items[start:end]
            end = start

    def _drop_dead_items(self) -> None:
        """Removes items whose request already ended, or whose caller's deadline has passed."""
        now = time.monotonic()
        kept: list[_QueuedItem] = []
        released = 0
        for item in self._queue:
            request = item.request
            if (
                not request.future.done()
                and request.deadline is not None
                and request.deadline < now
            ):
                request.future.set_exception(
                    DeadlineExceeded("the deadline passed before the items were scored")
                )
            if request.future.done():
                released += 1
                if request.deadline is not None and request.deadline < now:
                    self._metrics.items_expired.labels(self._name).inc()
                continue
            kept.append(item)
        if released:
            self._queue = kept
            self._admit(-released)

    def _infer(self, batch: list[_QueuedItem]) -> tuple[np.ndarray, np.ndarray]:
        """Runs in the model's thread: pad, forward, map logits to rewards."""
        started = time.perf_counter()
        features = self.model.encoder.pad([item.encoded for item in batch])
        logits = self.model.backend.forward(features)
        rewards = self.model.resolved.map_logits(logits)
        self._metrics.inference_time.labels(self._name).observe(time.perf_counter() - started)
        self._metrics.batch_size.labels(self._name).observe(len(batch))
        self._metrics.batch_padded_tokens.labels(self._name).observe(features["input_ids"].size)
        self._metrics.items_scored.labels(self._name).inc(len(batch))
        self._last_forward = (features["input_ids"].size, time.perf_counter() - started)
        return rewards, logits

    def _deliver(self, batch: list[_QueuedItem], rewards: np.ndarray, logits: np.ndarray) -> None:
        for row, item in enumerate(batch):
            request = item.request
            request.rewards[item.index] = rewards[row]
            if request.raw is not None:
                request.raw[item.index] = logits[row]
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                request.future.set_result(None)
        self._admit(-len(batch))

    def _fail(self, batch: list[_QueuedItem], error: Exception) -> None:
        for item in batch:
            if not item.request.future.done():
                item.request.future.set_exception(error)
        self._admit(-len(batch))

    def abort(self, error: Exception) -> None:
        """Fails every request with items queued or in the running forward pass with `error`.
        The running batch's items are released when its forward pass returns; requests still
        being tokenized fail when they would join the queue."""
        self._aborted_with = error
        for item in [*self._in_forward, *self._queue]:
            if not item.request.future.done():
                item.request.future.set_exception(error)
        self._admit(-len(self._queue))
        self._queue = []
        self._metrics.queue_depth.labels(self._name).set(0)

    def warm_up(self) -> None:
        """Runs in a thread before the model is marked ready: first passes allocate and compile."""
        encoder = self.model.encoder
        for batch_size, words in ((1, 8), (min(self.batching.max_batch_size, 8), 48)):
            encoded = encoder.encode(["warm up " * words] * batch_size)
            self.model.backend.forward(encoder.pad(encoded))
