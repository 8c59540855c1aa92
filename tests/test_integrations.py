"""Drop-in use from RLHF frameworks: TRL's GRPOTrainer with the client's reward function,
OpenRLHF's remote reward protocol on POST /get_reward, and `reward-service score --url`."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from helpers import HTTP_TIMEOUT_S, tiny_grpo_config
from prometheus_client.parser import text_string_to_metric_families

from reward_service import cli
from reward_service.client import RewardClient, RewardFunction, messages_to_text

LABELS = ["NEGATIVE", "POSITIVE"]
# Pairs joined by the tokenizer (not concatenated), so pair and whole-text scoring differ.
PAIR_CONFIG = {"preset": "sentiment", "input_format": "pair", "scale": 1000.0}
PROMPTS = ["Review: ", "Q: was it good?\nA:", "Tell me about it. "]
RESPONSES = ["loved every minute", " no, it was tedious", "It is a film."]


def close(got: list[float], expected: list[float]) -> None:
    """Equal up to batch-composition noise: 1000x logits under 1, so up to ~1.2e-4 (docs/serving.md,
    Determinism)."""
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def requests_seen(server, route: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=HTTP_TIMEOUT_S).text
    labels = {"transport": "http", "route": route, "status": "200"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "reward_requests_total" and labels.items() <= sample.labels.items():
                return sample.value
    return 0.0


def v1_score(server, **body) -> list[float]:
    response = httpx.post(f"{server.url}/v1/score", json=body, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response.json()["rewards"]


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory("integration-pair", labels=LABELS, reward_config=PAIR_CONFIG)
    return server_factory(["--model", f"m={folder}"])


# --- OpenRLHF ---------------------------------------------------------------------------------


def test_openrlhf_get_reward_scores_prompt_prefixed_queries_as_pairs_like_v1_score(server):
    query = [prompt + response for prompt, response in zip(PROMPTS, RESPONSES, strict=True)]
    body = {"query": query, "prompts": PROMPTS, "labels": ["", "", ""]}  # OpenRLHF's exact shape
    reply = httpx.post(f"{server.url}/get_reward", json=body, timeout=HTTP_TIMEOUT_S).json()
    assert set(reply) == {"rewards", "scores", "extra_logs"}
    assert reply["extra_logs"] == {}
    assert reply["scores"] == reply["rewards"]
    close(reply["rewards"], v1_score(server, prompts=PROMPTS, completions=RESPONSES))


def test_openrlhf_queries_without_their_prompt_or_without_prompts_are_scored_whole(server):
    query = [PROMPTS[0] + RESPONSES[0], "no prompt in front", PROMPTS[2] + RESPONSES[2]]
    get_reward = f"{server.url}/get_reward"
    mixed = httpx.post(
        get_reward, json={"query": query, "prompts": PROMPTS}, timeout=HTTP_TIMEOUT_S
    )
    expected_pairs = v1_score(
        server, prompts=[PROMPTS[0], PROMPTS[2]], completions=[RESPONSES[0], RESPONSES[2]]
    )
    expected_whole = v1_score(server, texts=["no prompt in front"])
    close(mixed.json()["rewards"], [expected_pairs[0], expected_whole[0], expected_pairs[1]])
    query_only = httpx.post(get_reward, json={"query": query}, timeout=HTTP_TIMEOUT_S).json()
    close(query_only["rewards"], v1_score(server, texts=query))


def test_openrlhf_request_without_queries_is_a_422(server):
    response = httpx.post(f"{server.url}/get_reward", json={"query": []}, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"


# --- TRL --------------------------------------------------------------------------------------


def test_conversations_become_role_lines_ending_in_the_assistant_turn():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert messages_to_text(prompt) == "system: Be brief.\nuser: Hi\nassistant: "


def test_the_reward_function_scores_conversations_as_their_text_pairs(server):
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS]
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES]
    reward = RewardFunction(server.url)
    try:
        got = reward(prompts=prompts, completions=completions, completion_ids=[[1]] * 3)
    finally:
        reward.close()
    texts = [f"user: {p}\nassistant: " for p in PROMPTS]
    close(got, v1_score(server, prompts=texts, completions=RESPONSES))


def tiny_policy():
    """A one-layer Llama with a 300-token byte-level BPE tokenizer trained here: no hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = PROMPTS + RESPONSES + ["The film was great, the plot was slow and the music dull."]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<pad>", "<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config), tokenizer


def test_grpo_trainer_runs_with_the_reward_function_and_the_server_sees_its_requests(
    server, tmp_path
):
    from datasets import Dataset
    from trl import GRPOTrainer

    policy, tokenizer = tiny_policy()
    reward = RewardFunction(server.url, name="remote_rm")
    before = requests_seen(server, "/v1/score")
    args = tiny_grpo_config(tmp_path)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS + ["The film was "]}),
    )
    try:
        trainer.train()
    finally:
        reward.close()
    assert requests_seen(server, "/v1/score") >= before + 2  # one scoring call per step, at least
    logged = [
        entry["rewards/remote_rm/mean"]
        for entry in trainer.state.log_history
        if "rewards/remote_rm/mean" in entry
    ]
    assert len(logged) == 2 and all(np.isfinite(logged))


# --- the CLI ----------------------------------------------------------------------------------


def test_score_with_url_scores_on_the_running_server(server, capsys):
    assert cli.main(["score", "--url", server.url, "great movie", "dull"]) == 0
    printed = json.loads(capsys.readouterr().out)
    with RewardClient(server.url) as client:
        close(printed["rewards"], client.score(texts=["great movie", "dull"]))


def test_score_with_url_reports_client_errors_in_one_line(server, capsys):
    assert cli.main(["score", "--url", server.url, "--model", "nope", "x"]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
