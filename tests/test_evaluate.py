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
    assert [sample["score"] for sample in result.samples] == pytest.approx(expected)
    assert result.score_mean == pytest.approx(sum(expected) / len(expected))
    assert all(sample["kl"] == 0.0 for sample in result.samples)
    assert result.kl_mean == 0.0
    assert 1 <= result.response_length_mean <= 12


def test_kl_to_another_policy_is_positive_on_average(
    tiny_causal_lm_factory, reward_url: str, prompts_file: Path
):
    policy = tiny_causal_lm_factory("evaluate-policy")
    other = tiny_causal_lm_factory("evaluate-other", seed=1)  # same tokenizer, other weights
    settings = EvaluationSettings(max_new_tokens=12, samples_per_prompt=4)
    reward = RemoteReward(reward_url)
    try:
        result = evaluate_policy(
            policy, prompts_file, reward, reference_source=other, settings=settings
        )
    finally:
        reward.close()

    # KL(policy || other) on the policy's own samples: about 1/20 nat per token or more between
    # two random models over a 300-token vocabulary.
    assert result.kl_mean > 0.05 * result.response_length_mean
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
