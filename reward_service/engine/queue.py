"""One model's queue: admits requests, forms batches across them, runs them, reassembles results.

Items from every request (and every transport) wait in one queue per model; which of them form
the next batch is planner.py's choice. Tokenisation and the forward pass run in worker threads;
the event loop only moves items around.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from reward_service.engine.limits import BatchingConfig
from reward_service.engine.metrics import Metrics
from reward_service.engine.planner import GROUPING_WINDOW_BATCHES, ForwardCostModel, choose_batch
from reward_service.errors import DeadlineExceeded, InferenceFailed, NonFiniteReward, QueueFull
from reward_service.model.inputs import TokenizerInput, characters
from reward_service.model.loading import LoadedModel
from reward_service.model.tokenization import EncodedText

logger = logging.getLogger(__name__)

# Requests up to this many characters are tokenised on the event loop: for them (a few hundred
# tokens, well under a millisecond) the two thread switches of handing the work to the tokenizer
# thread cost more than the work itself; larger ones go to that thread.
INLINE_TOKENIZE_MAX_CHARS = 2048


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


class ModelQueue:
    """One model's queue and its batching task.

    `submit` admits a request's items (or refuses them with QueueFull past `max_queue_items`),
    tokenises them and waits for their rewards; the batching task (`start`) takes a batch the
    planner chooses whenever the model is free, drops items whose caller's deadline passed, runs
    the forward pass on the compute thread and hands each request its rewards in order. Items
    admitted are always answered: scored, failed with the forward pass's error, or aborted.
    """

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
        self._forward_started_at: float | None = None  # time.monotonic(), while one runs
        self._aborted_with: Exception | None = None  # set by abort(): no more work is queued
        self.on_batching_died: Callable[[str, BaseException], None] | None = None

    # -- admission -------------------------------------------------------------------------

    async def submit(
        self,
        inputs: Sequence[TokenizerInput],
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
            if sum(map(characters, inputs)) <= INLINE_TOKENIZE_MAX_CHARS:
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
        self._task.add_done_callback(self._batching_ended)

    def _batching_ended(self, task: asyncio.Task) -> None:
        """The batching loop only ends by being cancelled; anything else is a bug that would
        leave every admitted request waiting forever. Answer them, and say so."""
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        logger.critical("the batching task of model %r stopped", self._name, exc_info=error)
        self.abort(
            InferenceFailed(
                f"model {self._name!r} stopped scoring ({type(error).__name__}: {error}): retry "
                "on another replica"
            )
        )
        if self.on_batching_died is not None:
            self.on_batching_died(self._name, error)

    def problem(self, now: float) -> str | None:
        """Why this model cannot be counted on to answer, or None: its batching task stopped,
        or a forward pass has run past `stall_after_s`."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            return f"its batching task stopped ({self._task.exception()!r})"
        started = self._forward_started_at
        if started is not None and now - started > self.batching.stall_after_s:
            return (
                f"a forward pass has been running for {now - started:.0f} s (stall_after_s = "
                f"{self.batching.stall_after_s:g})"
            )
        return None

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
                await self._score(loop, batch)
            finally:
                self._in_forward = []

    async def _score(self, loop: asyncio.AbstractEventLoop, batch: list[_QueuedItem]) -> None:
        """Runs `batch` through the model and delivers its rewards. A forward pass that fails
        is run again on each half, down to single items: one item that breaks the model (an
        input its code can't take, an out-of-memory at its length) fails its own request only,
        not every request that happened to share its batch."""
        self._forward_started_at = time.monotonic()
        try:
            rewards, logits, forward = await loop.run_in_executor(
                self._compute_executor, self._infer, batch
            )
        except Exception as error:  # keep serving
            if len(batch) > 1:
                logger.warning(
                    "forward pass of %d items failed for model %s (%s): running each half again",
                    len(batch),
                    self._name,
                    error,
                )
                half = len(batch) // 2
                await self._score(loop, batch[:half])
                await self._score(loop, batch[half:])
                return
            logger.exception("forward pass failed for model %s", self._name)
            self._fail(batch, InferenceFailed(f"the forward pass failed: {error}"))
            return
        finally:
            self._forward_started_at = None
        self._forward_cost.observe(*forward)
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
        chosen_indices = choose_batch(
            [item.length for item in window], self._forward_cost.per_batch_tokens, self.batching
        )
        batch = [window[index] for index in chosen_indices]
        chosen = {id(item) for item in batch}
        self._queue = [item for item in self._queue if id(item) not in chosen]
        self._metrics.queue_depth.labels(self._name).set(len(self._queue))
        return batch

    def _drop_dead_items(self) -> None:
        """Removes items whose request already ended (failed, or cancelled because its caller
        went away), or whose caller's deadline has passed."""
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
                # A call cancelled at its deadline (gRPC cancels it then) counts as expired.
                if request.deadline is not None and request.deadline < now:
                    self._metrics.items_expired.labels(self._name).inc()
                elif request.future.cancelled():  # the caller went away (gRPC, or REST's client)
                    self._metrics.items_cancelled.labels(self._name).inc()
                continue
            kept.append(item)
        if released:
            self._queue = kept
            self._admit(-released)

    def _infer(self, batch: list[_QueuedItem]) -> tuple[np.ndarray, np.ndarray, tuple[int, float]]:
        """Runs in the model's thread: pad, forward, map logits to rewards. Returns the rewards,
        the logits and (padded tokens, seconds) for the forward-cost model."""
        started = time.perf_counter()
        features = self.model.encoder.pad([item.encoded for item in batch])
        logits = self.model.backend.forward(features)
        rewards = self.model.resolved.map_logits(logits)
        self._metrics.inference_time.labels(self._name).observe(time.perf_counter() - started)
        self._metrics.batch_size.labels(self._name).observe(len(batch))
        self._metrics.batch_padded_tokens.labels(self._name).observe(features["input_ids"].size)
        self._metrics.items_scored.labels(self._name).inc(len(batch))
        return rewards, logits, (features["input_ids"].size, time.perf_counter() - started)

    def _deliver(self, batch: list[_QueuedItem], rewards: np.ndarray, logits: np.ndarray) -> None:
        finite = np.isfinite(rewards)
        for row, item in enumerate(batch):
            request = item.request
            if not finite[row]:
                self._metrics.items_non_finite.labels(self._name).inc()
                if not request.future.done():
                    request.future.set_exception(self._non_finite(item, float(rewards[row])))
            request.rewards[item.index] = rewards[row]
            if request.raw is not None:
                request.raw[item.index] = logits[row]
            request.remaining -= 1
            if request.remaining == 0 and not request.future.done():
                request.future.set_result(None)
        self._admit(-len(batch))

    def _non_finite(self, item: _QueuedItem, reward: float) -> NonFiniteReward:
        dtype = self.model.backend.dtype
        hint = (
            f"{dtype} overflows where float32 does not: serve it in float32"
            if dtype != "float32"
            else "check the model's weights and its reward mapping"
        )
        return NonFiniteReward(
            f"model {self._name!r} gave a non-finite reward ({reward}) for item {item.index} of "
            f"the request (dtype {dtype}); {hint}"
        )

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
        """Runs in a thread before the model is marked ready: first passes allocate and compile,
        and the last is as large as a batch may be (max_batch_tokens, max_batch_size, the
        model's max_length), so that a model that cannot fit one in memory fails at start, not
        under the first real load."""
        encoder = self.model.encoder
        for batch_size, words in ((1, 8), (min(self.batching.max_batch_size, 8), 48)):
            encoded = encoder.encode(["warm up " * words] * batch_size)
            self.model.backend.forward(encoder.pad(encoded))
        length = min(encoder.max_length, self.batching.max_batch_tokens)
        batch_size = max(
            1, min(self.batching.max_batch_size, self.batching.max_batch_tokens // length)
        )
        # At least one token per "warm", whatever the tokenizer: cut to exactly max_length.
        encoded = encoder.encode(["warm " * length] * batch_size)
        self.model.backend.forward(encoder.pad(encoded))
