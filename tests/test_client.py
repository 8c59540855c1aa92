"""The reward client against real servers on loopback ports: splitting, retries, failover,
typed errors, deadlines and the served models' list; the pure retry schedule and endpoint choice
without a server."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import HTTP_TIMEOUT_S, WAIT_S, RunningServer, metric, start_server, wait_for

from reward_service.client import (
    AsyncRewardClient,
    BadRequest,
    DeadlineExceeded,
    ModelNotFound,
    RewardClient,
    Unauthorized,
    Unavailable,
    backoff_delay_s,
)
from reward_service.client.base import EndpointPool
from reward_service.engine.engine import Engine
from reward_service.engine.limits import BatchingConfig
from reward_service.engine.schemas import ScoreRequest
from reward_service.model.spec import ModelSpec

LABELS = ["NEGATIVE", "POSITIVE"]
# Scaled up so that distinct texts get clearly distinct rewards (a random head barely varies).
PAIR_CONFIG = {"preset": "sentiment", "input_format": "pair", "scale": 1000.0}
# Retries quick enough for a test, patient enough to outlast a replica's restart.
PATIENT = dict(max_retries=60, backoff_base_s=0.05, backoff_max_s=0.5, endpoint_cooldown_s=0.2)
# A call that must outlast a server's restart, however long a busy machine takes to load the
# model again: it retries until the call's deadline, a bound for a failure only.
UNTIL_DEADLINE = dict(PATIENT, max_retries=None, retry_budget_s=None, deadline_s=3 * WAIT_S)
API_KEY = "client-key"


def many_texts(count: int, seed: int = 0) -> list[str]:
    """Distinct texts of varied length, so any reordering or duplication changes the rewards."""
    words = "good bad film plot slow wonderful dull actor scene music ending boring great".split()
    rng = np.random.default_rng(seed)
    return [
        f"{index} " + " ".join(rng.choice(words, rng.integers(1, 12))) for index in range(count)
    ]


def in_process_rewards(folder, texts: list[str]) -> list[float]:
    """The same model scored by an Engine in this process: what the server should answer."""
    limits = BatchingConfig(max_items_per_request=len(texts), max_queue_items=len(texts))

    async def score() -> list[float]:
        engine = Engine([ModelSpec(name="m", source=str(folder))], limits)
        await engine.start()
        try:
            return (await engine.score(ScoreRequest(texts=texts))).rewards
        finally:
            await engine.stop()

    return asyncio.run(score())


def assert_same_rewards(got: list[float], expected: list[float]) -> None:
    """Equal up to float noise: batches padded differently differ in the last bits (here 1000x
    logits under 1, so up to ~1.2e-4; docs/serving.md, Determinism)."""
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def score_requests(server: RunningServer, status: str = "200") -> float:
    """REST /v1/score requests answered with `status`, from the server's own metrics."""
    labels = {"transport": "http", "route": "/v1/score", "status": status}
    return metric(server, "reward_requests_total", **labels)


def list_models(url: str, twin: str, **options) -> list[dict]:
    """`list_models()` of the sync or the async client."""
    if twin == "sync":
        with RewardClient(url, **options) as client:
            return client.list_models()

    async def list_async() -> list[dict]:
        async with AsyncRewardClient(url, **options) as client:
            return await client.list_models()

    return asyncio.run(list_async())


def described(models: list[dict]) -> list[tuple]:
    """Each model entry's name, labels and max_length, in order."""
    return [(model["name"], model["labels"], model["max_length"]) for model in models]


def endpoint(server: RunningServer, transport: str) -> str:
    return server.url if transport == "http" else f"grpc://{server.grpc_target}"


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory("client-sentiment", labels=LABELS, reward_config=PAIR_CONFIG)


@pytest.fixture(scope="module")
def server(server_factory, folder) -> RunningServer:
    """Takes at most 256 items per request (the client is told more, and learns)."""
    return server_factory(["--model", f"m={folder}", "--max-items-per-request", "256"])


@pytest.fixture(scope="module")
def held_server(server_factory, folder) -> RunningServer:
    """Its forward passes wait while the test holds them (helpers.ServerGate)."""
    return server_factory(["--model", f"m={folder}"], gated=True)


@pytest.fixture(scope="module")
def keyed_server(server_factory, folder) -> RunningServer:
    """Needs API_KEY as a bearer token (REST) or in the call's metadata (gRPC)."""
    return server_factory(["--model", f"m={folder}", "--api-key", API_KEY])


# --- the pure parts -------------------------------------------------------------------------


def test_backoff_doubles_from_the_base_up_to_the_cap_with_half_of_each_step_random():
    low = [backoff_delay_s(retry, 0.1, 1.0, rng=lambda: 0.0) for retry in range(1, 7)]
    high = [backoff_delay_s(retry, 0.1, 1.0, rng=lambda: 1.0) for retry in range(1, 7)]
    assert low == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert high == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert 0.2 <= backoff_delay_s(3, 0.1, 1.0) <= 0.4


def test_endpoints_are_chosen_by_fewest_outstanding_and_a_failed_one_waits_out_its_cooldown():
    now = [0.0]
    pool = EndpointPool(["http://a", "http://b"], cooldown_s=1.0, clock=lambda: now[0])
    first, second = pool.acquire(), pool.acquire()
    assert {first.url, second.url} == {"http://a", "http://b"}  # one each while both are busy
    pool.release(first, healthy=False)
    pool.release(second, healthy=True)
    assert [pool.acquire().url for _ in range(3)] == [second.url] * 3  # failed one avoided
    now[0] = 1.5
    assert first.url in {pool.acquire().url for _ in range(2)}  # back after its cooldown


def test_an_empty_call_returns_nothing_and_mismatched_pairs_are_refused_before_sending():
    with RewardClient("http://127.0.0.1:9") as client:  # nothing listens there
        assert client.score(texts=[]) == []
        with pytest.raises(BadRequest, match="pair one to one"):
            client.score(prompts=["a", "b"], completions=["c"])


# --- against real servers -------------------------------------------------------------------


def test_ten_thousand_texts_through_a_256_item_server_come_back_in_order_as_scored_in_process(
    server, folder
):
    texts = many_texts(10_000)
    with RewardClient(server.url, max_items_per_request=1000, max_concurrency=4) as client:
        rewards = client.score(texts=texts)
        assert client.items_per_request <= 256  # learned from the server's 413
    assert len(rewards) == len(texts)
    assert_same_rewards(rewards, in_process_rewards(folder, texts))


def test_the_async_client_returns_exactly_what_the_sync_client_returns(server):
    texts = many_texts(1_500, seed=1)
    prompts, completions = texts[:700], texts[700:1400]
    with RewardClient(server.url) as client:
        expected = client.score(texts=texts), client.score(prompts=prompts, completions=completions)

    async def score_async():
        async with AsyncRewardClient(server.url, max_items_per_request=100) as client:
            return await asyncio.gather(
                client.score(texts=texts), client.score(prompts=prompts, completions=completions)
            )

    for got, want in zip(asyncio.run(score_async()), expected, strict=True):
        assert_same_rewards(got, want)


def test_the_grpc_transport_returns_exactly_what_http_returns(server):
    texts = many_texts(600, seed=2)
    with RewardClient(server.url) as http_client:
        expected = http_client.score(texts=texts)
    with RewardClient(f"grpc://{server.grpc_target}") as grpc_client:
        assert_same_rewards(grpc_client.score(texts=texts), expected)
        with pytest.raises(ModelNotFound):
            grpc_client.score(texts=["x"], model="nope")

    async def score_async():
        async with AsyncRewardClient(f"grpc://{server.grpc_target}") as client:
            return await client.score(texts=texts)

    assert_same_rewards(asyncio.run(score_async()), expected)


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("twin", ["sync", "async"])
def test_list_models_returns_the_served_models_as_get_v1_models_describes_them(
    server, twin, transport
):
    models = list_models(endpoint(server, transport), twin)
    served = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()["models"]
    assert described(models) == described(served)
    assert described(served) == [("m", LABELS, 128)]  # the tiny model's position table


@pytest.mark.parametrize("transport", ["http", "grpc"])
@pytest.mark.parametrize("twin", ["sync", "async"])
def test_list_models_with_a_wrong_api_key_is_unauthorized(keyed_server, twin, transport):
    url = endpoint(keyed_server, transport)
    with pytest.raises(Unauthorized):
        list_models(url, twin, api_key="wrong-key", **PATIENT)
    assert described(list_models(url, twin, api_key=API_KEY)) == [("m", LABELS, 128)]


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_422_is_raised_at_once_without_a_retry(server, twin):
    # A retry would be a second request, and would first wait at least 30 s.
    options = dict(PATIENT, max_retries=1, backoff_base_s=60.0, backoff_max_s=60.0)
    before = score_requests(server, "422")
    started = time.monotonic()
    with pytest.raises(BadRequest) as raised:
        if twin == "sync":
            with RewardClient(server.url, **options) as client:
                client.score(texts=["fine", None])
        else:

            async def score_async():
                async with AsyncRewardClient(server.url, **options) as client:
                    await client.score(texts=["fine", None])

            asyncio.run(score_async())
    assert raised.value.status == 422
    assert time.monotonic() - started < 30
    assert score_requests(server, "422") == before + 1


def test_an_unknown_model_is_model_not_found_without_a_retry(server):
    before = score_requests(server, "404")
    with RewardClient(server.url, **PATIENT) as client, pytest.raises(ModelNotFound):
        client.score(texts=["x"], model="nope")
    assert score_requests(server, "404") == before + 1


@pytest.mark.parametrize("twin", ["sync", "async"])
def test_the_deadline_is_honoured_even_while_the_server_holds_the_request(held_server, twin):
    # The test holds every forward pass: the server answers only once the test lets it, after
    # the call. A client that waited for the answer, or for its 120 s timeout, would fail.
    options = dict(deadline_s=0.5, timeout_s=120, **PATIENT)
    scored_before = metric(held_server, "reward_items_scored_total", model="m")
    settled_before = scored_before + metric(held_server, "reward_items_expired_total", model="m")
    held_server.gate.hold_forward()
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            if twin == "sync":
                with RewardClient(held_server.url, **options) as client:
                    client.score(texts=["slow"])
            else:

                async def score_async():
                    async with AsyncRewardClient(held_server.url, **options) as client:
                        await client.score(texts=["slow"])

                asyncio.run(score_async())
        elapsed_s = time.monotonic() - started
        assert metric(held_server, "reward_items_scored_total", model="m") == scored_before
    finally:
        held_server.gate.open_forward()
        # The abandoned item is then scored (if its batch was held) or dropped (if its deadline
        # passed in the queue): wait for that, or it would land in the next test's counts.
        wait_for(
            lambda: (
                metric(held_server, "reward_items_scored_total", model="m")
                + metric(held_server, "reward_items_expired_total", model="m")
                == settled_before + 1
            ),
            "the abandoned item to be scored or dropped",
        )
    assert elapsed_s < options["timeout_s"] / 2


def test_retries_that_run_out_raise_unavailable():
    client = RewardClient("http://127.0.0.1:9", max_retries=2, backoff_base_s=0.01)
    with client, pytest.raises(Unavailable, match="3 attempts"):
        client.score(texts=["x"])


def test_a_server_restarted_mid_call_is_ridden_out_with_nothing_lost_or_duplicated(
    tmp_path, folder
):
    texts = many_texts(6_000, seed=3)
    args = ["--model", f"m={folder}", "--max-items-per-request", "256"]
    # The test lets the first server answer the call's first requests, then stops it while it
    # holds the next one: the restart falls mid-call, whatever the machine's speed.
    first = start_server([*args, f"--shutdown-grace-s={WAIT_S}"], tmp_path, gated=True)
    second = None
    result: dict = {}

    def long_call() -> None:
        with RewardClient(
            first.url, max_items_per_request=32, max_concurrency=1, **UNTIL_DEADLINE
        ) as client:
            try:
                result["rewards"] = client.score(texts=texts)
            except Exception as error:  # reported by the assertions below
                result["error"] = error

    caller = threading.Thread(target=long_call, daemon=True)
    try:
        first.gate.hold_forward()
        caller.start()
        while score_requests(first) < 5:
            first.gate.wait_until_held()
            first.gate.allow_forward()
        first.gate.wait_until_held()
        first.process.send_signal(signal.SIGTERM)
        wait_for(
            lambda: (
                httpx.get(f"{first.url}/health/ready", timeout=HTTP_TIMEOUT_S).status_code == 503
            ),
            "the first server to refuse new requests",
        )
        first.gate.open_forward()  # the held request is answered, as every accepted one is
        assert first.process.wait(timeout=WAIT_S) == 0
        assert caller.is_alive(), f"the call ended before the restart: {result}"
        second = start_server(args, tmp_path, port=first.port)
        caller.join(timeout=3 * WAIT_S)
        assert not caller.is_alive()
        assert "error" not in result, result["error"]
        assert score_requests(second) > 0  # the rest of the call went to the new process
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert len(result["rewards"]) == len(texts)
    assert_same_rewards(result["rewards"], in_process_rewards(folder, texts))


def test_with_two_replicas_and_one_killed_every_call_succeeds_and_it_is_used_again_when_back(
    tmp_path, folder
):
    args = ["--model", f"m={folder}"]
    replicas = [start_server(args, tmp_path), start_server(args, tmp_path)]
    texts = many_texts(64, seed=4)
    try:
        with RewardClient([r.url for r in replicas], max_items_per_request=16, **PATIENT) as client:
            expected = client.score(texts=texts)
            assert all(score_requests(replica) > 0 for replica in replicas)  # load is spread
            replicas[0].process.kill()
            replicas[0].process.wait()
            for _ in range(10):
                assert_same_rewards(client.score(texts=texts), expected)
            replicas[0] = start_server(args, tmp_path, port=replicas[0].port)
            deadline = time.monotonic() + WAIT_S
            while score_requests(replicas[0]) == 0 and time.monotonic() < deadline:
                assert_same_rewards(client.score(texts=texts), expected)
            assert score_requests(replicas[0]) > 0  # the revived replica takes requests again
    finally:
        for replica in replicas:
            replica.stop()
