"""One 16 MiB body of 511 items of 32,768 characters, the longest the server takes, next to a
stream of ordinary requests, against a real server: its memory stays bounded and every ordinary
request is answered. (Before the tokenizer's work was bounded by the model, tokenising such a
body held every overflowing token: about 2.7 GiB.)"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from helpers import HTTP_TIMEOUT_S, metric, peak_rss, rss
from load_report import Tally

ITEMS = 511
ITEM_CHARS = 32768  # the default --max-chars-per-item
MIB = 1024 * 1024
MEMORY_GROWTH_LIMIT = 512 * MIB


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory(
        "long-texts", labels=["NEGATIVE", "POSITIVE"], reward_config={"preset": "sentiment"}
    )
    # The request budget raised so the body is admitted: what is measured is the tokenizer.
    return server_factory(["--model", f"m={folder}", "--max-chars-per-request=17000000"])


def test_a_body_of_the_longest_items_leaves_memory_bounded_and_others_answered(server, load_report):
    body = json.dumps({"texts": ["!" * ITEM_CHARS] * ITEMS}).encode()
    assert len(body) <= 16 * MIB  # the default --max-body-bytes: a legal request
    ordinary: list[int] = []
    ordinary_sent = 0
    big_done = threading.Event()

    def ordinary_stream() -> None:
        nonlocal ordinary_sent
        with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as client:
            while not big_done.is_set() or not ordinary:
                ordinary_sent += 1
                response = client.post("/v1/score", json={"texts": ["a fine film", "dull"]})
                ordinary.append(response.status_code)

    stream = threading.Thread(target=ordinary_stream)
    with peak_rss(server.process.pid) as peak:
        before = rss(server.process.pid)
        stream.start()
        try:
            response = httpx.post(
                f"{server.url}/v1/score",
                content=body,
                headers={"content-type": "application/json"},
                timeout=HTTP_TIMEOUT_S,
            )
        finally:
            big_done.set()
            stream.join()

    tally = load_report.record(
        Tally(
            "the longest items next to ordinary requests",
            f"1 body of {ITEMS} x {ITEM_CHARS:,} characters (16 MiB) + {ordinary_sent} ordinary "
            "2-text requests",
            admitted=(response.status_code == 200) + ordinary.count(200),
            refused=(response.status_code != 200) + len(ordinary) - ordinary.count(200),
            lost=ordinary_sent - len(ordinary),
            peak_growth_bytes=peak[0] - before,
        )
    )
    assert tally.lost == 0
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["rewards"]) == ITEMS
    assert response.json()["truncated"] == ITEMS
    assert peak[0] - before < MEMORY_GROWTH_LIMIT, f"grew {(peak[0] - before) / MIB:.0f} MiB"
    assert ordinary and set(ordinary) == {200}
    assert metric(server, "reward_items_truncated_total", model="m") >= ITEMS
