"""The batcher, in-process with a tiny real model: grouping, budgets, deadlines, admission."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from reward_service.engine.limits import BatchingConfig
from reward_service.engine.metrics import Metrics
from reward_service.engine.queue import ModelQueue
from reward_service.errors import DeadlineExceeded, QueueFull
from reward_service.model.loading import load_model
from reward_service.model.spec import ModelSpec


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    folder = tiny_model_factory("batcher", labels=["NEGATIVE", "POSITIVE"])
    return load_model(ModelSpec(name="m", source=str(folder)))


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"model": "m"}) or 0.0


async def queue_all_then_run(queue: ModelQueue, requests: list[list[str]], **submit_kwargs):
    """Submits every request before the batching loop starts, so batch formation sees them all."""
    tasks = [asyncio.create_task(queue.submit(texts, **submit_kwargs)) for texts in requests]
    while len(queue._queue) < sum(map(len, requests)):
        await asyncio.sleep(0.001)
    queue.start()
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await queue.stop()


def make_queue(model, **batching) -> tuple[ModelQueue, Metrics]:
    metrics = Metrics()
    tokenize, compute = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    return ModelQueue(model, BatchingConfig(**batching), metrics, tokenize, compute), metrics


def test_items_are_grouped_by_length_so_padding_stays_small(model):
    short, long = "short text", "a much longer text " * 20
    requests = [[short], [long]] * 3  # arrival order interleaves the lengths
    queue, metrics = make_queue(model, max_batch_size=3)

    results = asyncio.run(queue_all_then_run(queue, requests))

    long_tokens = len(model.encoder.encode([long])[0].input_ids)
    assert sample(metrics, "reward_batch_size_count") == 2
    # Arrival order would put a long item in each batch: 2 batches x 3 x long_tokens.
    assert sample(metrics, "reward_batch_padded_tokens_sum") < 1.2 * 3 * long_tokens
    assert [len(r.rewards) for r in results] == [1] * 6


def test_a_batch_never_exceeds_the_padded_token_budget(model):
    text = "tokens " * 30
    tokens_per_item = len(model.encoder.encode([text])[0].input_ids)
    queue, metrics = make_queue(model, max_batch_size=32, max_batch_tokens=tokens_per_item * 4)

    asyncio.run(queue_all_then_run(queue, [[text]] * 10))

    assert sample(metrics, "reward_batch_size_count") == 3  # 4 + 4 + 2 items
    assert sample(metrics, "reward_batch_size_sum") == 10


def test_a_request_split_across_batches_is_reassembled_in_order(model):
    texts = [f"item {i} " + "x " * (i % 7) for i in range(10)]
    queue, _ = make_queue(model, max_batch_size=3)
    whole = asyncio.run(queue_all_then_run(queue, [texts]))[0]

    queue, _ = make_queue(model, max_batch_size=32)
    singles = asyncio.run(queue_all_then_run(queue, [[t] for t in texts]))
    assert whole.rewards == pytest.approx([r.rewards[0] for r in singles], abs=1e-5)


def test_an_expired_deadline_drops_items_before_they_reach_the_model(model):
    queue, metrics = make_queue(model)
    already_passed = time.monotonic() - 1

    results = asyncio.run(queue_all_then_run(queue, [["a", "b", "c"]], deadline=already_passed))

    assert isinstance(results[0], DeadlineExceeded)
    assert sample(metrics, "reward_items_expired_total") == 3
    assert sample(metrics, "reward_items_scored_total") == 0


def test_admission_past_max_queue_items_is_refused_and_capacity_returns(model):
    async def scenario():
        queue, metrics = make_queue(model, max_queue_items=4, max_items_per_request=4)
        first = asyncio.create_task(queue.submit(["a", "b", "c"]))
        await asyncio.sleep(0)  # the first request is admitted; the loop has not started
        with pytest.raises(QueueFull):
            await queue.submit(["d", "e"])
        queue.start()
        await first
        second = await queue.submit(["d", "e", "f", "g"])  # capacity is back once answered
        await queue.stop()
        return metrics, second

    metrics, second = asyncio.run(scenario())
    assert len(second.rewards) == 4
    assert sample(metrics, "reward_requests_rejected_total") == 1
    assert sample(metrics, "reward_admitted_items") == 0


def test_every_torch_call_of_every_model_runs_on_the_engines_one_compute_thread(
    tiny_model_factory, monkeypatch
):
    """Loading, warm-up and forward passes of all models share one thread: each thread that runs
    torch ops gets its own OpenMP team, and more OpenMP threads than cores slows every forward."""
    import threading

    from reward_service.engine import engine as engine_module
    from reward_service.engine.engine import Engine
    from reward_service.engine.schemas import ScoreRequest

    threads: set[str] = set()

    def recorded(function):
        def call(*args, **kwargs):
            threads.add(threading.current_thread().name)
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(engine_module, "load_model", recorded(engine_module.load_model))
    monkeypatch.setattr(ModelQueue, "warm_up", recorded(ModelQueue.warm_up))
    monkeypatch.setattr(ModelQueue, "_infer", recorded(ModelQueue._infer))
    specs = [
        ModelSpec(
            name=name, source=str(tiny_model_factory(f"compute-{name}", labels=["NEG", "POS"]))
        )
        for name in ("first", "second")
    ]

    async def serve_both() -> None:
        engine = Engine(specs)
        await engine.start()
        try:
            for name in ("first", "second"):
                await engine.score(ScoreRequest(model=name, texts=["a text", "another"]))
        finally:
            await engine.stop()

    asyncio.run(serve_both())
    assert len(threads) == 1 and next(iter(threads)).startswith("compute"), threads
