"""`policy-trainer evaluate`: a tiny policy's samples scored on a real reward server, with the KL
to a reference policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import free_port

from policy_trainer.config import EvaluationSettings
from policy_trainer.evaluation import evaluate_policy
from policy_trainer.rollout import RemoteReward
from reward_service.client import RewardClient

PROMPTS = ["The movie was", "One of the best", "A dull,", "I loved", "The plot is"]


@pytest.fixture(scope="module")
def reward_url(tiny_model_factory, server_factory) -> str:
    folder = tiny_model_factory("evaluate-sentiment", labels=["NEGATIVE", "POSITIVE"])
    return server_factory(["--model", f"sentiment={folder}"]).url


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("evaluate") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS))
    return path


def test_scores_are_the_services_rewards_and_kl_to_the_policy_itself_is_zero(
    tiny_causal_lm_factory, reward_url: str, prompts_file: Path
):
    policy = tiny_causal_lm_factory("evaluate-policy")
    settings = EvaluationSettings(max_new_tokens=12, samples_per_prompt=2, batch_size=2)
    reward = RemoteReward(reward_url)
    try:
        result = evaluate_policy(
            policy, prompts_file, reward, reference_source=policy, settings=settings
        )
    finally:
        reward.close()

    assert (result.prompts, result.responses) == (5, 10)
    assert [sample["prompt"] for sample in result.samples] == [p for p in PROMPTS for _ in (0, 1)]
    with RewardClient(reward_url) as client:
        expected = client.score(
            prompts=[sample["prompt"] for sample in result.samples],
            completions=[sample["completion"] for sample in result.samples],
        )
    # The same texts, scored in other batches: a reward is a float32 logit of order 1 to 10 (the
    # tiny classifier's head is scaled by 20), and the batch it shares (its padded length, the
    # kernels' blocking) moves its last bits, ~1e-7 seen. 1e-5 is about ten float32 ulps at 10,
    # and far below what tells two completions apart.
    scores = [sample["score"] for sample in result.samples]
    assert scores == pytest.approx(expected, rel=0, abs=1e-5)
    assert result.score_mean == pytest.approx(sum(expected) / len(expected), rel=0, abs=1e-5)
    assert all(sample["kl"] == 0.0 for sample in result.samples)
    assert result.kl_mean == 0.0
    assert 1 <= result.response_length_mean <= 12


def test_samples_come_from_the_whole_distribution_whatever_the_policy_folder_asks_for(
    tiny_causal_lm_factory, prompts_file: Path
):
    # A folder whose generation_config.json asks for top-k 1 (greedy): followed, every sample
    # of a prompt would be the same.
    policy = tiny_causal_lm_factory(
        "evaluate-top-k-1", generation_config={"do_sample": True, "top_k": 1}
    )
    settings = EvaluationSettings(max_new_tokens=8, samples_per_prompt=4)
    result = evaluate_policy(
        policy, prompts_file, lambda prompts, completions: [0.0] * len(completions),
        settings=settings,
    )  # fmt: skip
    completions = [sample["completion"] for sample in result.samples]
    # Sampled at 0.7 from a random 300-token model, four samples of 8 tokens that all agree
    # would be a near impossibility; the seed makes the draw the same every run.
    for start in range(0, len(completions), 4):
        assert len(set(completions[start : start + 4])) > 1, completions[start : start + 4]


def test_kl_to_another_policy_is_positive_on_average(
    tiny_causal_lm_factory, reward_url: str, prompts_file: Path
):
    policy = tiny_causal_lm_factory("evaluate-policy")
    other = tiny_causal_lm_factory("evaluate-other", seed=1)  # same tokenizer, other weights
    settings = EvaluationSettings(max_new_tokens=12, samples_per_prompt=32)
    reward = RemoteReward(reward_url)
    try:
        result = evaluate_policy(
            policy, prompts_file, reward, reference_source=other, settings=settings
        )
    finally:
        reward.close()

    # KL(policy || other) between two random models over a 300-token vocabulary, sampled at 0.7
    # from the whole softmax: about 0.03 nats a token, 0.3-0.4 a response. The mean of 160
    # per-response k1 estimates (std about 0.8) has a standard error near 0.06: 0.01 nats a
    # token (0.12 a response) is some four standard errors below the KL.
    assert result.kl_mean > 0.01 * result.response_length_mean
    assert result.kl_std > 0


def test_evaluate_command_prints_the_figures_and_writes_every_sample(
    tiny_causal_lm_factory, reward_url: str, prompts_file: Path, tmp_path: Path
):
    policy = tiny_causal_lm_factory("evaluate-policy")
    output = tmp_path / "before.json"
    command = [sys.executable, "-m", "policy_trainer.cli", "evaluate", "--policy", str(policy),
               "--reward-url", reward_url, "--prompts", str(prompts_file), "--reference",
               str(policy), "--max-new-tokens", "8", "--samples", "3",
               "--output", str(output)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr

    written = json.loads(output.read_text())
    assert written["responses"] == 15 and len(written["samples"]) == 15
    assert written["settings"]["samples_per_prompt"] == 3
    assert f"score            mean {written['score_mean']:.4f}" in completed.stdout
    assert "KL to reference  mean 0.0000" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1] == str(output)


def test_evaluate_command_fails_clearly_when_the_reward_service_is_down(
    tiny_causal_lm_factory, prompts_file: Path, tmp_path: Path
):
    policy = tiny_causal_lm_factory("evaluate-policy")
    down = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "policy_trainer.cli", "evaluate", "--policy", str(policy),
               "--reward-url", down, "--prompts", str(prompts_file), "--max-new-tokens", "4",
               "--reward-max-wait-s", "1", "--output", str(tmp_path / "x.json")]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2
    message = completed.stderr.strip().splitlines()[-1]
    assert message.startswith(f"policy-trainer evaluate: scoring on {down} failed: ")
    assert not (tmp_path / "x.json").exists()
