"""The connection and call caps, against a real server whose forward pass the test holds: past
`--max-connections` REST answers 503, past `--grpc-max-concurrent-rpcs` gRPC answers
RESOURCE_EXHAUSTED, and the calls within the caps are all answered once the model runs."""

from __future__ import annotations

import socket

import grpc
import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, WAIT_S, metric, wait_for

from reward_service.grpc_gen import reward_pb2, reward_pb2_grpc

CAP = 3


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory(
        "caps", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    # The occupants' headers never complete; the deadline for them is far past the test's end.
    return server_factory(
        [
            "--model",
            f"m={folder}",
            f"--max-connections={CAP}",
            f"--grpc-max-concurrent-rpcs={CAP}",
            "--timeout-request-start-s=3600",
        ],
        gated=True,
    )


def test_past_max_connections_rest_answers_503(server):
    """Sockets that never finish their headers occupy the connections (the server accepts
    connections in the order they arrive, so all of them are its before the request that
    follows)."""
    occupants = []
    for _ in range(CAP):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S)
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: reward\r\n")
        occupants.append(sock)
    try:
        refused = httpx.post(
            f"{server.url}/v1/score", json={"texts": ["one too many"]}, timeout=HTTP_TIMEOUT_S
        )
    finally:
        for sock in occupants:
            sock.close()
    assert refused.status_code == 503
    wait_for(
        lambda: (
            httpx.post(
                f"{server.url}/v1/score", json={"texts": ["room again"]}, timeout=HTTP_TIMEOUT_S
            ).status_code
            == 200
        ),
        "a request to be answered once the occupants have gone",
    )


def test_past_max_concurrent_rpcs_grpc_answers_resource_exhausted(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reward_pb2_grpc.RewardServiceStub(channel)

        def score(text: str):
            return stub.Score.future(reward_pb2.ScoreRequest(texts=[text]), timeout=WAIT_S)

        server.gate.hold_forward()
        held = [score(f"held {index}") for index in range(CAP)]
        server.gate.wait_until_held()  # the first is in the held pass, the others queued
        wait_for(lambda: metric(server, "reward_admitted_items", model="m") == CAP, "calls queued")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(reward_pb2.ScoreRequest(texts=["one too many"]), timeout=HTTP_TIMEOUT_S)
        server.gate.open_forward()
        answered = [len(call.result().rewards) for call in held]

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert answered == [1] * CAP
