"""OpenRLHF as it really calls a remote reward model: its queries are `prompt + response` decoded
with the policy's special tokens (chat markup, left padding), the API key can only ride in the
URL (aiohttp sends userinfo as Basic credentials), several reward models are several URLs, and
`extra_logs` carries what a combined reward is made of."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
import numpy as np
import pytest
from helpers import CLEAN_COMPLETION, CLEAN_PROMPT, HTTP_TIMEOUT_S, MARKED_UP

KEY = "openrlhf-key"
LABELS = ["NEGATIVE", "POSITIVE"]
# A reward made of two outputs: P(POSITIVE) - P(NEGATIVE), so extra_logs has two objectives.
TWO_OBJECTIVES = {
    "outputs": [{"label": "POSITIVE", "weight": 1.0}, {"label": "NEGATIVE", "weight": -1.0}],
    "activation": "softmax",
}
# Left padding as OpenRLHF's batches carry it, decoded: the pad token of each template's family.
LEFT_PAD = {
    "chatml": "<|endoftext|>" * 3,
    "llama3": "<|finetune_right_pad_id|>" * 2,
    "llama2": "",
    "special-tokens": "<pad><pad>",
}
# Rewards of the same texts in the same batch shapes agree to float32 rounding (~1e-7 on values
# of order 1); 1e-6 is the tolerance and leaves a margin of ten.
SAME_REWARD = 1e-6


@pytest.fixture(scope="module")
def servers(server_factory, tiny_model_factory):
    single = tiny_model_factory("openrlhf-single", labels=LABELS)
    pair = tiny_model_factory(
        "openrlhf-pair", labels=LABELS, reward_config={"input_format": "pair"}, seed=1
    )
    combined = tiny_model_factory(
        "openrlhf-combined", labels=LABELS, reward_config=TWO_OBJECTIVES, seed=2
    )
    # The same weights as `single` (same seed), with markup kept.
    kept = tiny_model_factory("openrlhf-kept", labels=LABELS, reward_config={"strip_markup": []})
    args = ["--model", f"single={single}", "--model", f"pair={pair}"]
    return {
        "open": server_factory(
            [*args, "--model", f"combined={combined}", "--model", f"kept={kept}"]
        ),
        "keyed": server_factory([*args, "--api-key", KEY]),
    }


def post(server, path: str, body: dict) -> dict:
    response = httpx.post(f"{server.url}{path}", json=body, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()


def v1_score(server, **body) -> dict:
    return post(server, "/v1/score", body)


# --- chat markup --------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["single", "pair"])
def test_a_marked_up_query_scores_as_its_clean_pair_for_every_default_template(servers, model):
    server = servers["open"]
    templates = sorted(MARKED_UP)
    prompts = [MARKED_UP[template][0] for template in templates]
    queries = [
        LEFT_PAD[template] + prompt + MARKED_UP[template][1]
        for template, prompt in zip(templates, prompts, strict=True)
    ]
    got = post(server, f"/get_reward/{model}", {"query": queries, "prompts": prompts})["rewards"]
    clean = v1_score(
        server,
        model=model,
        prompts=[CLEAN_PROMPT] * len(templates),
        completions=[CLEAN_COMPLETION] * len(templates),
    )["rewards"]
    np.testing.assert_allclose(got, clean, rtol=0, atol=SAME_REWARD)


def test_the_same_weights_with_markup_kept_score_a_marked_up_pair_differently(servers):
    """So the test above could fail: markup left in moves this model's reward."""
    server = servers["open"]
    prompt, completion = MARKED_UP["chatml"]
    kept = v1_score(server, model="kept", prompts=[prompt], completions=[completion])["rewards"]
    stripped = v1_score(server, model="single", prompts=[prompt], completions=[completion])
    clean = v1_score(server, model="kept", prompts=[CLEAN_PROMPT], completions=[CLEAN_COMPLETION])
    assert stripped["rewards"][0] == pytest.approx(clean["rewards"][0], abs=SAME_REWARD)
    assert abs(kept[0] - clean["rewards"][0]) > 100 * SAME_REWARD


def test_v1_score_strips_the_same_markup_from_prompts_and_completions(servers):
    server = servers["open"]
    prompts, completions = zip(
        *(MARKED_UP[template] for template in sorted(MARKED_UP)), strict=True
    )
    marked = v1_score(server, model="pair", prompts=list(prompts), completions=list(completions))
    clean = v1_score(
        server,
        model="pair",
        prompts=[CLEAN_PROMPT] * len(prompts),
        completions=[CLEAN_COMPLETION] * len(prompts),
    )
    np.testing.assert_allclose(marked["rewards"], clean["rewards"], rtol=0, atol=SAME_REWARD)


# --- several models, extra_logs -----------------------------------------------------------------


def test_the_path_selects_the_model_and_an_unknown_one_is_a_404(servers):
    server = servers["open"]
    queries = ["a fine film", "a dull film"]
    for model in ("single", "pair"):
        by_path = post(server, f"/get_reward/{model}", {"query": queries})["rewards"]
        direct = v1_score(server, model=model, texts=queries)["rewards"]
        np.testing.assert_allclose(by_path, direct, rtol=0, atol=SAME_REWARD)
    first = post(server, "/get_reward", {"query": queries})["rewards"]
    np.testing.assert_allclose(
        first, v1_score(server, texts=queries)["rewards"], rtol=0, atol=SAME_REWARD
    )
    response = httpx.post(
        f"{server.url}/get_reward/nope", json={"query": queries}, timeout=HTTP_TIMEOUT_S
    )
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "model_not_found"


def test_extra_logs_carry_each_output_a_combined_reward_is_made_of(servers):
    server = servers["open"]
    queries = ["a fine film", "a dull film", "it was a film"]
    reply = post(server, "/get_reward/combined", {"query": queries})
    raw = np.asarray(v1_score(server, model="combined", texts=queries, return_raw=True)["raw"])
    probabilities = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
    assert set(reply["extra_logs"]) == {"POSITIVE", "NEGATIVE"}
    np.testing.assert_allclose(reply["extra_logs"]["POSITIVE"], probabilities[:, 1], atol=1e-6)
    np.testing.assert_allclose(reply["extra_logs"]["NEGATIVE"], probabilities[:, 0], atol=1e-6)
    np.testing.assert_allclose(
        reply["rewards"], probabilities[:, 1] - probabilities[:, 0], atol=1e-6
    )


def test_a_reward_read_from_one_output_has_no_extra_logs(servers):
    reply = post(servers["open"], "/get_reward/single", {"query": ["a fine film"]})
    assert reply["extra_logs"] == {}


# --- the key in the URL -------------------------------------------------------------------------


def aiohttp_post(url: str, body: dict) -> tuple[int, dict]:
    """As OpenRLHF's async remote reward client posts: aiohttp, the URL as configured."""

    async def send() -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
            return response.status, await response.json()

    return asyncio.run(send())


def test_aiohttp_with_the_key_in_the_urls_userinfo_is_let_in(servers):
    server = servers["keyed"]
    body = {"query": ["a fine film"], "prompts": ["a "], "labels": [""]}
    status, reply = aiohttp_post(f"http://rm:{KEY}@127.0.0.1:{server.port}/get_reward", body)
    assert status == 200, reply
    assert len(reply["rewards"]) == 1
    status, reply = aiohttp_post(f"http://rm:{KEY}@127.0.0.1:{server.port}/get_reward/pair", body)
    assert status == 200, reply


@pytest.mark.parametrize("userinfo", ["", "rm:wrong@", f"{KEY}@"])
def test_aiohttp_without_the_key_as_password_is_unauthorized(servers, userinfo):
    server = servers["keyed"]
    status, reply = aiohttp_post(
        f"http://{userinfo}127.0.0.1:{server.port}/get_reward", {"query": ["a fine film"]}
    )
    assert status == 401
    assert reply["error"]["type"] == "unauthorized"
