"""REST honours what gRPC honours: a client that gave up has its queued items dropped, not
scored, and a request's timeout header drops the items that can no longer be answered in time.
The test holds the model's forward pass, so that the queue holds what the test put there for
as long as the test wants."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, metric, wait_for
from load_report import Tally

CLIENTS, ITEMS_PER_REQUEST, MAX_BATCH_SIZE = 20, 50, 32


@pytest.fixture(scope="module")
def folder(tiny_model_factory) -> Path:
    return tiny_model_factory(
        "abandon-sentiment", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )


@pytest.fixture(scope="module")
def held(server_factory, folder: Path):
    return server_factory(
        ["--model", f"m={folder}", "--max-batch-size", str(MAX_BATCH_SIZE)], gated=True
    )


def send_and_hold(server, texts: list[str]) -> socket.socket:
    """A client that has sent its request and waits for the answer, on a socket the test closes
    when it wants the client to be gone."""
    body = json.dumps({"texts": texts}).encode()
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT_S)
    connection.sendall(head + body)
    return connection


def test_clients_that_give_up_have_their_queued_items_dropped_not_scored(held, load_report):
    gone = dict(transport="http", route="/v1/score", status="499")
    gone_before = metric(held, "reward_requests_total", **gone)
    scored_before = metric(held, "reward_items_scored_total", model="m")
    cancelled_before = metric(held, "reward_items_cancelled_total", model="m")
    sent = CLIENTS * ITEMS_PER_REQUEST
    held.gate.hold_forward()
    try:
        connections = [
            send_and_hold(held, [f"request {c} item {i}" for i in range(ITEMS_PER_REQUEST)])
            for c in range(CLIENTS)
        ]
        # Every item admitted: one batch in the held forward pass, the rest queued.
        wait_for(
            lambda: metric(held, "reward_admitted_items", model="m") == sent, "all to be queued"
        )
        for connection in connections:
            connection.close()
        wait_for(
            lambda: metric(held, "reward_requests_total", **gone) == gone_before + CLIENTS,
            "the server to see every client go (and log it 499)",
        )
    finally:
        held.gate.open_forward()
    wait_for(
        lambda: (
            metric(held, "reward_items_scored_total", model="m")
            + metric(held, "reward_items_cancelled_total", model="m")
            == scored_before + cancelled_before + sent
        ),
        "every item to be scored or dropped",
    )
    scored = metric(held, "reward_items_scored_total", model="m") - scored_before
    dropped = metric(held, "reward_items_cancelled_total", model="m") - cancelled_before
    load_report.record(
        Tally(
            "REST clients that give up",
            f"{CLIENTS} requests of {ITEMS_PER_REQUEST} items, their clients gone once all are "
            f"queued: {scored:.0f} items scored (the batch in the held pass), {dropped:.0f} "
            "dropped",
            admitted=CLIENTS,  # all admitted; nobody was left to answer
            lost=round(sent - scored - dropped),  # items neither scored nor dropped
        )
    )
    assert scored <= MAX_BATCH_SIZE, f"{scored} items of abandoned requests were scored"
    wait_for(lambda: metric(held, "reward_admitted_items", model="m") == 0, "no item left")


def test_the_timeout_header_drops_items_that_cannot_be_answered_in_time(held):
    expired_before = metric(held, "reward_items_expired_total", model="m")
    held.gate.hold_forward()
    with ThreadPoolExecutor(2) as pool:
        try:
            # The first request's batch is held in the forward pass; the second waits behind it.
            first = pool.submit(
                httpx.post,
                f"{held.url}/v1/score",
                json={"texts": ["first"]},
                timeout=HTTP_TIMEOUT_S,
            )
            held.gate.wait_until_held()
            late = pool.submit(
                httpx.post,
                f"{held.url}/v1/score",
                json={"texts": ["late"] * 3},
                headers={"X-Request-Timeout-Ms": "200"},
                timeout=HTTP_TIMEOUT_S,
            )
            wait_for(lambda: metric(held, "reward_admitted_items", model="m") == 4, "queued")
            queued_at = time.monotonic()  # after the server received it: its deadline is earlier
            wait_for(lambda: time.monotonic() > queued_at + 0.2, "its timeout to pass")
        finally:
            held.gate.open_forward()
        assert first.result().status_code == 200
        response = late.result()
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "deadline_exceeded"
    assert metric(held, "reward_items_expired_total", model="m") == expired_before + 3


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_timeout_header_that_is_not_a_positive_number_is_refused(held, value):
    response = httpx.post(
        f"{held.url}/v1/score",
        json={"texts": ["a"]},
        headers={"X-Request-Timeout-Ms": value},
        timeout=HTTP_TIMEOUT_S,
    )
    assert response.status_code == 422
    assert "X-Request-Timeout-Ms".lower() in response.json()["error"]["message"]
