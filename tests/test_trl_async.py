"""AsyncRewardFunction in TRL: GRPOTrainer awaits it on its event loop against a running server,
conversations are scored as the sync RewardFunction scores them, and each call's figures
(items truncated, latency) reach the trainer's logs through TRL's `log_metric`."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from helpers import HTTP_TIMEOUT_S, metric, tiny_grpo_config

from reward_service.client import AsyncRewardFunction, RewardFunction

LABELS = ["NEGATIVE", "POSITIVE"]
PAIR_CONFIG = {"preset": "sentiment", "input_format": "pair", "scale": 1000.0}
# The server keeps 24 tokens per item: the long prompts below are always cut, the short never.
MAX_LENGTH = 24
LONG_PROMPT = "Tell me what you thought of the film, the plot, the music and the actors. " * 3
SHORT_PROMPTS = ["Review: ", "Was it good?", "Tell me about it."]
COMPLETIONS = ["loved it", "no, tedious", "It is a film."]
# Rewards are 1000x logits: one item's reward moves by up to ~1e-4 with what shares its batch
# (docs/serving.md, Determinism), so equal means equal to 1e-3.
REWARD_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def server(server_factory, tiny_model_factory):
    folder = tiny_model_factory("trl-async-pair", labels=LABELS, reward_config=PAIR_CONFIG)
    return server_factory(["--model", f"rm={folder}", "--max-length", str(MAX_LENGTH)])


def v1_score(server, **body) -> dict:
    response = httpx.post(f"{server.url}/v1/score", json=body, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def conversations(prompts: list[str], completions: list[str]) -> tuple[list, list]:
    """TRL's conversational shape: the prompt's messages, and the completion's."""
    return (
        [[{"role": "user", "content": prompt}] for prompt in prompts],
        [[{"role": "assistant", "content": completion}] for completion in completions],
    )


async def score_once(reward: AsyncRewardFunction, **kwargs) -> list[float]:
    try:
        return await reward(**kwargs)
    finally:
        await reward.aclose()


def test_async_reward_function_scores_conversations_as_the_sync_one_does(server):
    prompts, completions = conversations(SHORT_PROMPTS, COMPLETIONS)
    got = asyncio.run(
        score_once(AsyncRewardFunction(server.url), prompts=prompts, completions=completions)
    )
    sync = RewardFunction(server.url)
    try:
        expected = sync(prompts=prompts, completions=completions)
    finally:
        sync.close()
    assert got == pytest.approx(expected, abs=REWARD_TOLERANCE)
    texts = [f"user: {prompt}\nassistant: " for prompt in SHORT_PROMPTS]
    rest = v1_score(server, prompts=texts, completions=COMPLETIONS)["rewards"]
    assert got == pytest.approx(rest, abs=REWARD_TOLERANCE)


@pytest.mark.parametrize("function_kind", ["async", "sync"])
def test_each_call_logs_the_servers_truncated_count_and_its_latency_through_log_metric(
    server, function_kind
):
    prompts = [LONG_PROMPT, *SHORT_PROMPTS]
    completions = ["it was fine", *COMPLETIONS]
    logged: dict[str, list[float]] = {}

    def log_metric(name: str, value: float) -> None:  # TRL's GRPOTrainer passes its _log_metric
        logged.setdefault(name, []).append(value)

    call = {"prompts": prompts, "completions": completions, "log_metric": log_metric}
    if function_kind == "async":
        asyncio.run(score_once(AsyncRewardFunction(server.url, name="rm"), **call))
    else:
        reward = RewardFunction(server.url, name="rm")
        try:
            reward(**call)
        finally:
            reward.close()
    truncated_by_server = v1_score(server, prompts=prompts, completions=completions)["truncated"]
    assert truncated_by_server == 1  # the long prompt alone
    assert logged["rewards/rm/truncated_items"] == [float(truncated_by_server)]
    (latency_s,) = logged["rewards/rm/latency_s"]
    assert 0 < latency_s < HTTP_TIMEOUT_S


def test_grpo_trainer_awaits_the_async_reward_function_and_logs_its_figures(
    server, tiny_causal_lm_factory, tmp_path
):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    policy_folder = tiny_causal_lm_factory("trl-async-policy")
    policy = AutoModelForCausalLM.from_pretrained(policy_folder)
    tokenizer = AutoTokenizer.from_pretrained(policy_folder)
    # Conversational prompts, each longer than the server's MAX_LENGTH, so every item is cut.
    prompts = [[{"role": "user", "content": LONG_PROMPT + topic}] for topic in ("Q1", "Q2")]
    reward = AsyncRewardFunction(server.url, name="remote_rm")
    requests_before = metric(server, "reward_requests_total", route="/v1/score", status="200")
    args = tiny_grpo_config(tmp_path, max_completion_length=4, max_steps=1)
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    try:
        trainer.train()
    finally:
        # The client's connections belong to TRL's event loop: close them there.
        asyncio.run_coroutine_threadsafe(reward.aclose(), trainer.async_loop).result()
    requests_after = metric(server, "reward_requests_total", route="/v1/score", status="200")
    assert requests_after >= requests_before + 1
    (step_log,) = [
        entry for entry in trainer.state.log_history if "rewards/remote_rm/mean" in entry
    ]
    assert np.isfinite(step_log["rewards/remote_rm/mean"])
    # One call scored the step's generation batch, every item of it cut to MAX_LENGTH.
    assert step_log["rewards/remote_rm/truncated_items"] == args.generation_batch_size
    assert 0 < step_log["rewards/remote_rm/latency_s"] < HTTP_TIMEOUT_S
