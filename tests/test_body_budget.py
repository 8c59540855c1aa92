"""The budget for REST bodies being received at once (--max-body-bytes-in-flight), against a real
server: stalled uploads fill it, a request past it is refused 429 unread while health, metrics
and small requests still answer, and a body gives its share back once it is in or its client has
gone."""

from __future__ import annotations

import http.client
import json
import socket

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, metric, wait_for
from load_report import Tally

MIB = 1024 * 1024
BODY_LIMIT = 1 * MIB
BUDGET = 3 * MIB
IN_FLIGHT = "reward_http_body_bytes_in_flight"
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory(
        "body-budget", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    return server_factory(
        [
            "--model",
            f"m={folder}",
            f"--max-body-bytes={BODY_LIMIT}",
            f"--max-body-bytes-in-flight={BUDGET}",
        ]
    )


def padded_body(size: int) -> bytes:
    """A valid score request of exactly `size` bytes (JSON allows trailing whitespace)."""
    body = json.dumps({"texts": ["a fine film"]}).encode()
    return body + b" " * (size - len(body))


def start_upload(server, headers: bytes, first_part: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S)
    sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: reward\r\nContent-Type: application/json\r\n")
    sock.sendall(headers + b"\r\n" + first_part)
    return sock


def answer_of(sock: socket.socket) -> http.client.HTTPResponse:
    """The server's answer on a raw socket, parsed by the standard library."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def test_past_the_budget_requests_are_refused_unread_and_shares_come_back(server, load_report):
    # Two uploads by Content-Length and one chunked (which reserves the body limit, the most it
    # can grow to) fill the 3 MiB budget; each has sent part of its body and stalls.
    body = padded_body(BODY_LIMIT)
    by_length = [
        start_upload(server, b"Content-Length: %d\r\n" % BODY_LIMIT, body[: BODY_LIMIT // 2])
        for _ in range(2)
    ]
    chunked = start_upload(
        server, b"Transfer-Encoding: chunked\r\n", b"10\r\n" + b" " * 16 + b"\r\n"
    )
    wait_for(lambda: metric(server, IN_FLIGHT) == BUDGET, "three uploads to fill the budget")

    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
        refused = client.post("/v1/score", content=padded_body(BODY_LIMIT // 4), headers=JSON)
        small = client.post("/v1/score", json={"texts": ["a small request is never counted"]})
        health = client.get("/health/ready")
        assert small.status_code == 200
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "too_many_bytes_in_flight"
        assert refused.headers["retry-after"] == "1"
        assert health.status_code == 200
        assert metric(server, "reward_http_body_budget_refusals_total") == 1

        # A client that goes away gives its share back...
        chunked.close()
        wait_for(lambda: metric(server, IN_FLIGHT) == 2 * MIB, "the closed upload's share back")
        assert (
            client.post("/v1/score", content=padded_body(BODY_LIMIT // 4), headers=JSON).status_code
            == 200
        )

        # ...and so does a body that arrives in full, which is then answered.
        first = by_length[0]
        first.sendall(body[BODY_LIMIT // 2 :])
        answer = answer_of(first)
        assert answer.status == 200
        assert len(json.loads(answer.read())["rewards"]) == 1
        wait_for(lambda: metric(server, IN_FLIGHT) == 1 * MIB, "the finished upload's share back")

        # A body over the per-body limit is 413 (a retry would not help), not 429.
        too_large = client.post("/v1/score", content=b" " * (BODY_LIMIT + 1))
        assert too_large.status_code == 413
    for sock in by_length:
        sock.close()
    wait_for(lambda: metric(server, IN_FLIGHT) == 0, "every share back")
    load_report.record(
        Tally(
            "uploads filling the budget for bodies in flight",
            "3 stalled 1 MiB uploads (3 MiB budget), then a 256 KiB request, a small one, health, "
            "the 256 KiB one again, one upload finished, a body over the limit",
            admitted=4,  # the small request, health, the retried 256 KiB one, the finished upload
            refused=3,  # the first 256 KiB request (429), the body over the limit (413), and the
            # closed chunked upload; the two other uploads were closed by the test
        )
    )


def test_a_budget_smaller_than_one_body_is_refused_at_start():
    from pydantic import ValidationError

    from reward_service.serving.settings import ServeSettings

    with pytest.raises(ValidationError, match="max-body-bytes-in-flight"):
        ServeSettings(max_body_bytes=2 * MIB, max_body_bytes_in_flight=MIB)
