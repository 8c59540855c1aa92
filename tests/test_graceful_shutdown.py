"""Graceful shutdown of a real server: on SIGTERM readiness turns false, new requests get the
documented "shutting down" refusal (HTTP 503 `shutting_down`, gRPC UNAVAILABLE), every accepted
request is answered, and the process exits within its grace period."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import HTTP_TIMEOUT_S, WAIT_S, metric, positive_logits, start_server, wait_for
from load_report import Tally

from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

WORDS = "good bad film plot slow wonderful dull actor scene music ending boring great".split()
POOL = [
    f"{i} " + " ".join(WORDS[(i * 5 + k) % len(WORDS)] for k in range(1 + i % 7)) for i in range(32)
]
# Long enough never to end before what a test waits for (a busy machine is slow, not wrong);
# the grace period's own end is tested with a short one.
GRACE_S = WAIT_S
ANSWERED, REFUSED, NOT_LISTENING, LOST = (
    "answered",
    "refused: shutting down",
    "refused: not listening",
    "lost",
)


@pytest.fixture(scope="module")
def folder(tiny_model_factory):
    return tiny_model_factory(
        "graceful-shutdown", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )


@pytest.fixture(scope="module")
def expected(folder) -> dict[str, float]:
    return positive_logits(folder, POOL)


def texts_for(client: int, request: int) -> list[str]:
    start = (client * 7 + request * 3) % len(POOL)
    return [POOL[(start + k) % len(POOL)] for k in range(1 + (client + request) % 4)]


def correct(rewards: list[float], texts: list[str], expected: dict[str, float]) -> bool:
    return rewards == pytest.approx([expected[text] for text in texts], abs=1e-4)


def admitted_items(server) -> float:
    return metric(server, "reward_admitted_items", model="m")


def ready_status(server) -> int:
    return httpx.get(f"{server.url}/health/ready", timeout=HTTP_TIMEOUT_S).status_code


def test_sigterm_turns_readiness_false_refuses_new_requests_and_answers_the_accepted_ones(
    folder, expected, tmp_path
):
    # The test holds the forward pass, so the accepted requests are unanswered at SIGTERM and
    # until the test has seen the refusals.
    server = start_server(
        ["--model", f"m={folder}", "--max-batch-size=64", f"--shutdown-grace-s={GRACE_S}"],
        tmp_path,
        gated=True,
    )
    texts = POOL[:3]
    try:
        with ThreadPoolExecutor(2) as pool, grpc.insecure_channel(server.grpc_target) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            server.gate.hold_forward()
            accepted_rest = pool.submit(
                httpx.post, f"{server.url}/v1/score", json={"texts": texts}, timeout=HTTP_TIMEOUT_S
            )
            accepted_grpc = stub.Score.future(reward_pb2.ScoreRequest(texts=texts), timeout=WAIT_S)
            wait_for(lambda: admitted_items(server) == 6, "both requests to be admitted")

            server.process.send_signal(signal.SIGTERM)

            wait_for(lambda: ready_status(server) == 503, "readiness to turn false")
            assert not accepted_rest.done() and not accepted_grpc.done()
            ready = httpx.get(f"{server.url}/health/ready", timeout=HTTP_TIMEOUT_S).json()
            refused = httpx.post(
                f"{server.url}/v1/score", json={"texts": ["new"]}, timeout=HTTP_TIMEOUT_S
            )
            with pytest.raises(grpc.RpcError) as grpc_refused:
                stub.Score(reward_pb2.ScoreRequest(texts=["new"]), timeout=WAIT_S)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S
            )
            server.gate.open_forward()
            rest_answer = accepted_rest.result()
            grpc_answer = accepted_grpc.result()
        exit_code = server.process.wait(timeout=WAIT_S)
    finally:
        server.stop()

    assert ready["status"] == "shutting_down"
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "shutting_down"
    assert refused.headers["connection"] == "close"
    assert grpc_refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in grpc_refused.value.details()
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert rest_answer.status_code == 200
    assert correct(rest_answer.json()["rewards"], texts, expected)
    assert correct(list(grpc_answer.rewards), texts, expected)
    assert exit_code == 0
    assert "every accepted request answered" in server.log()


def start_lonely_batch_server(folder, tmp_path, *, grace_s: float):
    """A server whose batches wait 10 minutes for company (and hold 64 items): a request stays
    queued, unanswered, for as long as the test needs."""
    return start_server(
        [
            "--model",
            f"m={folder}",
            "--max-wait-ms=600000",
            "--max-batch-size=64",
            f"--shutdown-grace-s={grace_s}",
        ],
        tmp_path,
    )


def submit_admitted(pool: ThreadPoolExecutor, server):
    """One scoring request, returned once the server has admitted it."""
    accepted = pool.submit(
        httpx.post, f"{server.url}/v1/score", json={"texts": ["waits"]}, timeout=WAIT_S
    )
    wait_for(lambda: admitted_items(server) == 1, "the request to be admitted")
    return accepted


def test_requests_still_unanswered_when_the_grace_period_ends_get_the_shutting_down_refusal(
    folder, tmp_path
):
    # The batch would wait 10 minutes for company: far past the 6 s grace period.
    server = start_lonely_batch_server(folder, tmp_path, grace_s=6)
    try:
        with ThreadPoolExecutor(1) as pool:
            accepted = submit_admitted(pool, server)
            server.process.send_signal(signal.SIGTERM)
            answer = accepted.result()
        exit_code = server.process.wait(timeout=WAIT_S)
    finally:
        server.stop()

    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "shutting_down"
    assert "grace period" in answer.json()["error"]["message"]
    assert exit_code == 0
    assert "1 accepted requests unanswered" in server.log()


def test_sigterm_during_a_stream_of_requests_loses_no_accepted_request(
    folder, expected, tmp_path, load_report
):
    server = start_server(["--model", f"m={folder}", "--shutdown-grace-s", str(GRACE_S)], tmp_path)
    outcomes: list[tuple[str, str, bool, str]] = []  # transport, outcome, after SIGTERM, detail
    lock = threading.Lock()
    sigterm_sent = threading.Event()

    def record(transport: str, outcome: str, detail: str = "") -> None:
        with lock:
            outcomes.append((transport, outcome, sigterm_sent.is_set(), detail))

    # Each client streams requests until the server refuses it, as a client would before turning
    # to another replica.
    def rest_client(client: int) -> None:
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as http:
            for request in range(100_000):
                texts = texts_for(client, request)
                try:
                    response = http.post("/v1/score", json={"texts": texts})
                except httpx.ConnectError:
                    return record("rest", NOT_LISTENING)
                except httpx.TransportError as error:
                    return record("rest", LOST, repr(error))
                if response.status_code == 200 and correct(
                    response.json()["rewards"], texts, expected
                ):
                    record("rest", ANSWERED)
                elif (
                    response.status_code == 503
                    and response.json()["error"]["type"] == "shutting_down"
                ):
                    return record("rest", REFUSED)
                else:
                    return record("rest", LOST, f"{response.status_code} {response.text[:200]}")

    def grpc_client(client: int) -> None:
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            for request in range(100_000):
                texts = texts_for(client, request)
                try:
                    response = stub.Score(reward_pb2.ScoreRequest(texts=texts), timeout=WAIT_S)
                except grpc.RpcError as error:
                    details = error.details() or ""
                    if error.code() != grpc.StatusCode.UNAVAILABLE:
                        return record("grpc", LOST, f"{error.code()} {details}")
                    if "shutting down" in details:
                        return record("grpc", REFUSED)
                    if "connect" in details.lower():  # "failed to connect ... refused"
                        return record("grpc", NOT_LISTENING, details)
                    return record("grpc", LOST, details)
                if correct(list(response.rewards), texts, expected):
                    record("grpc", ANSWERED)
                else:
                    return record("grpc", LOST, f"wrong rewards {list(response.rewards)}")

    try:
        clients = [threading.Thread(target=rest_client, args=(i,)) for i in range(6)]
        clients += [threading.Thread(target=grpc_client, args=(i,)) for i in range(6, 10)]
        for thread in clients:
            thread.start()
        wait_for(lambda: len(outcomes) >= 200, "200 answers before SIGTERM")
        sigterm_sent.set()
        server.process.send_signal(signal.SIGTERM)
        for thread in clients:
            thread.join(timeout=GRACE_S + WAIT_S)
        exit_code = server.process.wait(timeout=GRACE_S + WAIT_S)
    finally:
        server.stop()

    table = Counter((transport, outcome) for transport, outcome, _, _ in outcomes)
    after_sigterm = Counter(outcome for _, outcome, after, _ in outcomes if after)
    print(
        f"\nshutdown under a stream (10 clients: 6 REST, 4 gRPC): {dict(table)}; "
        f"after SIGTERM: {dict(after_sigterm)}"
    )
    lost = [outcome for outcome in outcomes if outcome[1] == LOST]
    load_report.record(
        Tally(
            "SIGTERM during a stream of requests",
            f"10 clients (6 REST, 4 gRPC) sending until refused: {len(outcomes):,} requests",
            admitted=sum(1 for outcome in outcomes if outcome[1] == ANSWERED),
            refused=sum(1 for outcome in outcomes if outcome[1] in (REFUSED, NOT_LISTENING)),
            lost=len(lost),
        )
    )
    assert not lost
    assert not any(thread.is_alive() for thread in clients)
    assert sum(1 for _, outcome, _, _ in outcomes if outcome != ANSWERED) == len(clients)
    assert exit_code == 0
    assert "every accepted request answered" in server.log()


def test_a_second_signal_answers_the_accepted_requests_at_once_and_exits_0(
    folder, tmp_path, load_report
):
    # The batch would wait 10 minutes for company, and the grace period is longer still: only
    # the second signal can end this.
    server = start_lonely_batch_server(folder, tmp_path, grace_s=900)
    try:
        with ThreadPoolExecutor(1) as pool:
            accepted = submit_admitted(pool, server)
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: ready_status(server) == 503, "the drain to begin")
            server.process.send_signal(signal.SIGTERM)
            answer = accepted.result()
        exit_code = server.process.wait(timeout=WAIT_S)
    finally:
        server.stop()

    load_report.record(
        Tally(
            "a second SIGTERM during the drain",
            "1 accepted request whose batch waits for company",
            admitted=1,  # answered 503 shutting_down, asserted below
        )
    )
    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "shutting_down"
    assert "at once" in answer.json()["error"]["message"]
    assert exit_code == 0


def test_a_forward_pass_hung_past_the_grace_period_ends_in_exit_status_1(folder, tmp_path):
    """The request is answered when the grace period runs out; the hung pass keeps the process
    alive, and the watchdog ends it with status 1."""
    server = start_server(["--model", f"m={folder}", "--shutdown-grace-s=6"], tmp_path, gated=True)
    try:
        server.gate.hold_forward()
        with ThreadPoolExecutor(1) as pool:
            accepted = pool.submit(
                httpx.post, f"{server.url}/v1/score", json={"texts": ["hangs"]}, timeout=WAIT_S
            )
            server.gate.wait_until_held()
            server.process.send_signal(signal.SIGTERM)
            answer = accepted.result()
        exit_code = server.process.wait(timeout=WAIT_S)
    finally:
        server.gate.open_all()
        server.stop()

    assert answer.status_code == 503
    assert answer.json()["error"]["type"] == "shutting_down"
    assert exit_code == 1
    assert "still running 6.0 s after the shutdown signal" in server.log()
