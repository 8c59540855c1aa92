"""Which queued items form the next batch: pure functions over item lengths, testable without a
model. The queue (queue.py) measures the forward cost and calls these.

The oldest waiting item always opens the batch, so no item waits behind an endless stream of
better-fitting ones; the items closest to it in length fill it, up to `max_batch_size` items and
`max_batch_tokens` padded tokens. Once the forward cost is known (ForwardCostModel), the batch is
the oldest item's run in the cheapest split of the window, so short items stay out of a long
item's batch where the padding would cost more than a second batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reward_service.engine.limits import BatchingConfig

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


def choose_batch(
    lengths: Sequence[int], per_batch_tokens: float, limits: BatchingConfig
) -> list[int]:
    """Indices into `lengths` (queue order, the oldest first) of the next batch."""
    if not math.isinf(per_batch_tokens) and len(lengths) <= (
        limits.max_batch_size * COST_SEARCH_WINDOW_BATCHES
    ):
        return cheapest_batch_with_oldest(lengths, per_batch_tokens, limits)
    return closest_in_length_to_oldest(lengths, limits)


def closest_in_length_to_oldest(lengths: Sequence[int], limits: BatchingConfig) -> list[int]:
    """The oldest item and the items closest to it in length, as many as the limits allow."""
    batch = [0]
    longest = lengths[0]
    for index in sorted(range(1, len(lengths)), key=lambda i: abs(lengths[i] - lengths[0])):
        if len(batch) == limits.max_batch_size:
            break
        candidate_longest = max(longest, lengths[index])
        if candidate_longest * (len(batch) + 1) > limits.max_batch_tokens:
            continue
        batch.append(index)
        longest = candidate_longest
    return batch


def cheapest_batch_with_oldest(
    lengths: Sequence[int], per_batch_tokens: float, limits: BatchingConfig
) -> list[int]:
    """The oldest item's batch in the cheapest split of the window into batches.

    Items sorted by length are cut into runs, each run one batch costing `per_batch_tokens`
    plus its padded tokens; the least total cost is found by dynamic programming.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    least = [0.0] + [math.inf] * len(order)  # least[end]: cheapest split of order[:end]
    cut = [0] * (len(order) + 1)  # where the last batch of that split starts
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]  # sorted, so the run's last item is its longest
        for start in range(end - 1, max(0, end - limits.max_batch_size) - 1, -1):
            if longest * (end - start) > limits.max_batch_tokens and start < end - 1:
                break
            cost = least[start] + per_batch_tokens + longest * (end - start)
            if cost < least[end]:
                least[end], cut[end] = cost, start
    end = len(order)
    while True:
        start = cut[end]
        if 0 in order[start:end]:
            return order[start:end]
        end = start
