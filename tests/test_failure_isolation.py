"""One item that makes the forward pass fail fails its own request only: the batch it shared is
run again in halves, and every other request in it is answered."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, metric, wait_for
from load_report import Tally
from transformers import AutoTokenizer

BREAKING_WORD = "zebra"


@pytest.fixture(scope="module")
def folder(tiny_model_factory) -> Path:
    return tiny_model_factory(
        "isolation-sentiment",
        labels=["NEGATIVE", "POSITIVE"],
        reward_config={"preset": "sentiment"},
    )


def test_an_item_that_breaks_the_forward_pass_fails_only_its_own_request(
    server_factory, folder, load_report
):
    server = server_factory(["--model", f"m={folder}"], gated=True)
    token_ids = AutoTokenizer.from_pretrained(folder)(BREAKING_WORD, add_special_tokens=False)
    [breaking_token] = token_ids["input_ids"]
    server.gate.fail_forward_on(breaking_token)
    texts = [[f"a film {index}"] for index in range(6)]
    texts[3] = [f"a {BREAKING_WORD} {3}"]
    url = f"{server.url}/v1/score"
    with ThreadPoolExecutor(len(texts) + 1) as pool:
        server.gate.hold_forward()
        try:
            # The first request's pass is held; the six queue behind it and share the next batch.
            first = pool.submit(httpx.post, url, json={"texts": ["first"]}, timeout=HTTP_TIMEOUT_S)
            server.gate.wait_until_held()
            calls = [
                pool.submit(httpx.post, url, json={"texts": chunk}, timeout=HTTP_TIMEOUT_S)
                for chunk in texts
            ]
            wait_for(lambda: metric(server, "reward_admitted_items", model="m") == 7, "queued")
        finally:
            server.gate.open_forward()
        assert first.result().status_code == 200
        responses = [call.result() for call in calls]

    load_report.record(
        Tally(
            "an item that breaks the forward pass",
            "7 one-item requests, one of them breaking the pass of the batch it shares",
            admitted=1 + len(responses),  # each answered: 200, or 500 for the breaking item
        )
    )
    failed = responses.pop(3)
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "inference_failed"
    assert "cannot take token" in failed.json()["error"]["message"]
    assert [response.status_code for response in responses] == [200] * 5


def test_warm_up_ends_with_a_batch_as_large_as_the_limits_allow(server_factory, folder):
    # The tiny model takes 128 tokens: 2,048 tokens make a batch of 16 rows, under the 32 allowed.
    server = server_factory(["--model", f"m={folder}", "--max-batch-tokens", "2048"], gated=True)
    assert server.gate.largest_forward() == 16 * 128
    small = server_factory(["--model", f"m={folder}", "--max-batch-size", "4"], gated=True)
    assert small.gate.largest_forward() == 4 * 128


def test_a_model_whose_warm_up_pass_fails_stops_the_server_with_the_reason(server_factory, folder):
    """Not a server that says "loading" forever: the warm-up's error ends it, in one line."""
    server = server_factory(
        ["--model", f"m={folder}"], gated=True, held_loads=["m"], wait_ready=False
    )
    [warm_token] = AutoTokenizer.from_pretrained(folder)("warm", add_special_tokens=False)[
        "input_ids"
    ]
    server.gate.fail_forward_on(warm_token)  # every warm-up pass holds "warm"
    server.gate.release_load("m")
    assert server.process.wait(timeout=HTTP_TIMEOUT_S) != 0
    assert "model 'm' failed its warm-up forward pass" in server.log()
