"""Readiness tells the truth: a model whose forward pass hangs is not ready (REST and gRPC) until
the pass returns, and a model whose batching task dies has its requests answered and the server
exits non-zero for its supervisor to restart it, instead of hanging every request forever."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import HTTP_TIMEOUT_S, WAIT_S, start_server, wait_for
from load_report import Tally

from reward_service.serving.grpc import CurrentHealthServicer
from reward_service.serving.server import EXIT_ENGINE_FAILED

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def folder(tiny_model_factory) -> Path:
    return tiny_model_factory(
        "health-sentiment", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )


def readiness(server) -> tuple[int, dict]:
    response = httpx.get(f"{server.url}/health/ready", timeout=HTTP_TIMEOUT_S)
    return response.status_code, response.json()


def grpc_health(server, service: str = "") -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=service)
        return stub.Check(request, timeout=HTTP_TIMEOUT_S).status


def score_in_background(server, texts: list[str]) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["response"] = httpx.post(
                f"{server.url}/v1/score", json={"texts": texts}, timeout=WAIT_S
            )
        except Exception as error:  # reported by the assertions
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def test_grpc_health_check_answers_what_the_engine_says_now_not_what_the_last_poll_saw():
    # REST's /health/ready reads the engine when asked; gRPC's Check must too, or a client that
    # saw REST turn ready gets NOT_SERVING from gRPC until the next poll.
    async def check() -> int:
        async def engine_turned_ready() -> None:
            await servicer.set("", SERVING)

        servicer = CurrentHealthServicer(engine_turned_ready)
        await servicer.set("", NOT_SERVING)  # what the last poll saw
        reply = await servicer.Check(health_pb2.HealthCheckRequest(service=""), context=None)
        return reply.status

    assert asyncio.run(check()) == SERVING


def test_a_hung_forward_pass_turns_readiness_false_until_it_returns(
    server_factory, folder: Path, load_report
):
    server = server_factory(["--model", f"m={folder}", "--stall-after-s", "1"], gated=True)
    assert readiness(server)[0] == 200 and grpc_health(server) == SERVING
    server.gate.hold_forward()
    caller, outcome = score_in_background(server, ["a film"])
    server.gate.wait_until_held()  # the forward pass hangs from here on, for as long as it's held

    wait_for(lambda: readiness(server)[0] == 503, "REST readiness to turn false")
    status, body = readiness(server)
    assert body["status"] == "stalled" and body["models"] == {"m": False}
    assert "forward pass has been running" in body["problems"]["m"]
    wait_for(lambda: grpc_health(server) == NOT_SERVING, "gRPC health to turn NOT_SERVING")
    assert grpc_health(server, "m") == NOT_SERVING

    server.gate.open_forward()
    caller.join(timeout=WAIT_S)
    load_report.record(
        Tally(
            "a forward pass that hangs",
            "1 request whose pass hangs until the test lets it go; readiness checked meanwhile",
            admitted=int("response" in outcome),
            lost=int("response" not in outcome),
        )
    )
    assert outcome["response"].status_code == 200
    wait_for(lambda: readiness(server)[0] == 200, "readiness to come back")
    wait_for(lambda: grpc_health(server) == SERVING, "gRPC health to come back")


def test_a_dead_batching_task_answers_its_requests_and_the_server_exits_non_zero(
    folder: Path, tmp_path: Path, load_report
):
    server = start_server(["--model", f"m={folder}"], tmp_path, gated=True)
    try:
        server.gate.crash_batcher()
        caller, outcome = score_in_background(server, ["a film"])
        caller.join(timeout=WAIT_S)
        load_report.record(
            Tally(
                "a batching task that dies",
                "1 request to a model whose batching task crashes",
                admitted=int("response" in outcome),
                lost=int("response" not in outcome),
            )
        )
        assert not caller.is_alive(), "the request was never answered"
        response = outcome["response"]
        assert response.status_code == 500, response.text
        assert "stopped scoring" in response.json()["error"]["message"]
        assert server.process.wait(timeout=WAIT_S) == EXIT_ENGINE_FAILED
        assert "the server stops (exit status 70)" in server.log()
    finally:
        server.stop()
