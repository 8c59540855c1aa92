"""The client against the failures a real deployment has: a restart that takes tens of seconds,
one replica of two answering server errors, a body too large for one request, a confused
`Retry-After`, and something other than the reward service answering on the port."""

from __future__ import annotations

import asyncio
import http.server
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from helpers import (
    WAIT_S,
    metric,
    poison_word,
    start_server,
    train_word_classifier,
    wait_for,
)
from load_report import Tally

from reward_service.client import (
    AsyncRewardFunction,
    BadRequest,
    NonFiniteReward,
    RewardClient,
    RewardFunction,
    Unavailable,
    UnexpectedResponse,
)
from reward_service.client.base import Call, Endpoint, EndpointPool
from reward_service.client.contract import ClientConfig, Retryable
from reward_service.client.errors import ServerError
from reward_service.client.transports import grpc as grpc_transport
from reward_service.client.transports import http as http_transport

POISON = "zebra"
# An outage longer than the old default retries lasted (8 retries: 8-16 s of backoff).
OUTAGE_S = 20


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_word_classifier(tmp_path_factory.mktemp("failover") / "clean")


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = train_word_classifier(tmp_path_factory.mktemp("failover") / "poisoned")
    return poison_word(folder, POISON)


def test_the_default_client_and_the_trl_reward_functions_ride_out_a_restart_of_20_s(
    classifier: Path, tmp_path: Path, load_report
):
    args = ["--model", f"rm={classifier}"]
    server = start_server(args, tmp_path)
    restarted = None
    outcomes: dict[str, object] = {}
    try:
        with RewardClient(server.url) as client:
            assert len(client.score(texts=["a good film"])) == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=WAIT_S) == 0

        def call(name: str, score) -> None:
            try:
                outcomes[name] = score()
            except Exception as error:  # reported by the assertions below
                outcomes[name] = error

        client = RewardClient(server.url)  # every option at its default
        reward_function = RewardFunction(server.url)

        async def async_reward() -> list[float]:  # on its own loop, as TRL's daemon loop runs it
            reward = AsyncRewardFunction(server.url)
            try:
                return await reward(prompts=["the film"], completions=["good"])
            finally:
                await reward.aclose()

        callers = [
            threading.Thread(target=call, args=("client", lambda: client.score(texts=["good"]))),
            threading.Thread(
                target=call,
                args=("trl", lambda: reward_function(prompts=["the film"], completions=["good"])),
            ),
            threading.Thread(target=call, args=("trl-async", lambda: asyncio.run(async_reward()))),
        ]
        down_since = time.monotonic()
        for caller in callers:
            caller.start()
        # The outage lasts until both calls have been failing for OUTAGE_S (or one gave up).
        wait_for(
            lambda: time.monotonic() - down_since >= OUTAGE_S or outcomes,
            f"{OUTAGE_S} s of outage",
            timeout_s=WAIT_S,
        )
        assert not outcomes, f"gave up within {OUTAGE_S} s of outage: {outcomes}"
        restarted = start_server(args, tmp_path, port=server.port)
        for caller in callers:
            caller.join(timeout=WAIT_S)
        names = ("client", "trl", "trl-async")
        succeeded = sum(isinstance(outcomes.get(name), list) for name in names)
        load_report.record(
            Tally(
                f"a restart of at least {OUTAGE_S} s",
                "a default RewardClient call and TRL RewardFunction and AsyncRewardFunction "
                "calls, sent while the server is down",
                admitted=succeeded,
                lost=len(names) - succeeded,
            )
        )
        for name in names:
            rewards = outcomes[name]
            assert isinstance(rewards, list) and len(rewards) == 1, f"{name}: {rewards!r}"
        client.close()
        reward_function.close()
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


@pytest.fixture(scope="module")
def replicas(server_factory, classifier: Path, poisoned: Path):
    """Two replicas of model `rm`: the first gives non-finite rewards (500 / INTERNAL) for texts
    holding the poisoned word, as a replica on a broken GPU or in fp16 might; the second is
    sound."""
    return server_factory(["--model", f"rm={poisoned}"]), server_factory(
        ["--model", f"rm={classifier}"]
    )


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_replica_answering_server_errors_is_failed_over_and_every_call_succeeds(
    replicas, scheme, load_report
):
    broken, sound = replicas
    urls = [
        server.url if scheme == "http" else f"grpc://{server.grpc_target}"
        for server in (broken, sound)
    ]
    refused_before = metric(broken, "reward_items_non_finite_total", model="rm")
    succeeded = 0
    with RewardClient(urls) as client:
        for index in range(4):
            rewards = client.score(texts=[f"the {POISON} {index}", "a good film"])
            assert len(rewards) == 2 and all(map(math.isfinite, rewards))
            succeeded += 1
    load_report.record(
        Tally(
            f"two replicas, one answering server errors ({scheme})",
            "4 client calls of 2 items through both replicas",
            admitted=succeeded,
        )
    )
    # Requests go to the replica with fewest in flight, ties taken in turn: one of the first two
    # calls went to the broken one first (which was then avoided for its cooldown).
    assert metric(broken, "reward_items_non_finite_total", model="rm") > refused_before


def test_with_no_other_replica_a_server_error_is_raised(replicas):
    broken, _ = replicas
    with RewardClient([broken.url]) as client, pytest.raises(NonFiniteReward):
        client.score(texts=[f"the {POISON}"])


def test_a_body_too_large_splits_only_that_request_and_the_item_limit_is_kept(
    server_factory, classifier: Path
):
    small_bodies = server_factory(["--model", f"rm={classifier}", "--max-body-bytes", "4096"])
    score_route = dict(transport="http", route="/v1/score", status="200")
    with RewardClient(small_bodies.url) as client:
        long_texts = [f"review {index}: " + "the film was good " * 50 for index in range(8)]
        assert len(client.score(texts=long_texts)) == 8  # 8 x ~900 bytes: split until it fits
        assert client.items_per_request == 256  # the next call's texts may be short
        before = metric(small_bodies, "reward_requests_total", **score_route)
        assert len(client.score(texts=[f"good {index}" for index in range(50)])) == 50
        assert metric(small_bodies, "reward_requests_total", **score_route) == before + 1
        with pytest.raises(BadRequest, match="even one item"):
            client.score(texts=["good " * 2000])


def test_a_too_many_items_refusal_is_remembered(server_factory, classifier: Path):
    few_items = server_factory(["--model", f"rm={classifier}", "--max-items-per-request", "16"])
    with RewardClient(few_items.url, max_items_per_request=64) as client:
        assert len(client.score(texts=[f"good {index}" for index in range(64)])) == 64
        assert client.items_per_request == 16


# -- the retry rules, on the retry loop's own clock ------------------------------------------------


def failing_call(**options) -> tuple[Call, Endpoint]:
    config = ClientConfig(**options)
    pool = EndpointPool(["http://a"], config.endpoint_cooldown_s)
    return Call.start(config, pool), pool.endpoints[0]


def test_retry_after_is_obeyed_up_to_its_cap():
    call, endpoint = failing_call(retry_after_max_s=7, backoff_base_s=0.01, backoff_max_s=0.01)
    now = time.monotonic()
    asks_a_day = Retryable("HTTP 429", retry_after_s=86_400)
    assert call.retry_delay_s(1, endpoint, asks_a_day, failing_since=now) == 7
    asks_two = Retryable("HTTP 429", retry_after_s=2)
    assert call.retry_delay_s(1, endpoint, asks_two, failing_since=now) == 2


def test_retries_go_on_until_the_budget_would_be_overrun_whatever_their_count():
    call, endpoint = failing_call(retry_budget_s=120, backoff_base_s=1, backoff_max_s=1)
    error = Retryable("connection refused")
    # 1,000 retries in, 100 s after the first failure: a wait of at most 1 s still fits.
    assert call.retry_delay_s(1000, endpoint, error, failing_since=time.monotonic() - 100) <= 1
    with pytest.raises(Unavailable, match="retry_budget_s = 120"):
        call.retry_delay_s(3, endpoint, error, failing_since=time.monotonic() - 119.9)


def test_max_retries_still_bounds_the_count_when_given():
    call, endpoint = failing_call(max_retries=2)
    error = Retryable("connection refused")
    call.retry_delay_s(2, endpoint, error, failing_since=time.monotonic())
    with pytest.raises(Unavailable, match="gave up after 3 attempts"):
        call.retry_delay_s(3, endpoint, error, failing_since=time.monotonic())


# -- something else answering -------------------------------------------------------------------


class LoginPage(http.server.BaseHTTPRequestHandler):
    """What a corporate proxy answers to anything: 200 and a page of HTML."""

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b"<html><body>Please sign in</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def login_page() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LoginPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_200_that_is_not_a_reward_answer_is_the_clients_own_error(login_page: str):
    with RewardClient(login_page) as client:
        with pytest.raises(UnexpectedResponse, match="Please sign in"):
            client.score(texts=["good"])
        with pytest.raises(UnexpectedResponse, match="no JSON"):
            client.list_models()


# --- errors the reward service did not make: a proxy's in front of it (Ray Serve's) -------------


class _RpcError(grpc.RpcError):
    """An RPC error as grpc's channel raises it: a status, details and trailing metadata."""

    def __init__(self, code: grpc.StatusCode, trailing: tuple = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "The actor died unexpectedly before finishing this task."

    def trailing_metadata(self) -> tuple:
        return self._trailing


def test_a_5xx_without_the_services_error_object_is_a_proxys_and_retried():
    url = "http://127.0.0.1:1"
    # Ray Serve's HTTP proxy, when the replica holding a request dies: plain text.
    with pytest.raises(Retryable, match="from a proxy"):
        http_transport.scores_from(httpx.Response(500, text="Internal Server Error"), url)
    # The service's own 500 names its error: one replica's broken model, failed over instead.
    own = {"error": {"type": "inference_failed", "message": "the forward pass failed"}}
    with pytest.raises(ServerError):
        http_transport.scores_from(httpx.Response(500, json=own), url)


def test_a_grpc_internal_without_the_services_error_type_is_a_proxys_and_retried():
    url = "grpc://127.0.0.1:1"
    for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        assert isinstance(grpc_transport.classify(_RpcError(code), url), Retryable)
    own = _RpcError(grpc.StatusCode.INTERNAL, (("reward-error-type", "inference_failed"),))
    assert isinstance(grpc_transport.classify(own, url), ServerError)
