"""PPO end to end: a tiny policy learns what a classifier served by the real reward service
prefers (the word "good"), in one process, in two through `accelerate launch`, and on two
machines of one process each."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    PPO_PROMPTS,
    PPO_TARGET_WORD,
    PPO_TASK_SETTINGS,
    REPO_ROOT,
    build_word_level_lm,
    free_port,
)
from ppo_process import launch_ppo_machines, launch_ppo_processes, says_the_target_word

from policy_trainer.checkpoint import latest_checkpoint, load_rng_state, load_state
from policy_trainer.config import LoraOptions, PPOConfig
from policy_trainer.forward import response_logprobs
from policy_trainer.models import load_policy
from policy_trainer.prompts import PromptRecord, encode_prompts, read_prompts
from policy_trainer.rollout import RemoteReward, generate_responses
from policy_trainer.run_log import read_jsonl, read_metrics
from policy_trainer.trainer import PPOTrainer
from reward_service.client import RewardClient

STEP_METRICS = {
    "step",
    "episodes",
    "score_mean",
    "score_std",
    "kl",
    "beta",
    "entropy",
    "policy_loss",
    "policy_clip_fraction",
    "approx_kl",
    "value_loss",
    "value_clip_fraction",
    "explained_variance",
    "response_length",
    "eos_fraction",
    "learning_rate",
    "generate_s",
    "rollout_forward_s",
    "score_s",
    "score_wait_s",
    "score_overlap_s",
    "train_s",
    "step_s",
}


@pytest.fixture(scope="module")
def reward_server(server_factory, ppo_task):
    return server_factory(["--model", f"rm={ppo_task.classifier}"])


@pytest.fixture()
def one_torch_thread():
    """Tiny models run fastest on one thread, and don't stall when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_word_level_lm(tmp_path_factory.mktemp("in-process") / "policy")


def in_process_trainer(policy: Path, run_dir: Path, **settings) -> PPOTrainer:
    """A trainer of the task's policy scored in-process (no reward service), for one step."""
    config = PPOConfig(
        **{**PPO_TASK_SETTINGS, "checkpoint_every": 0, "samples_per_log": 0, **settings}
    )
    return PPOTrainer(
        config,
        policy_source=policy,
        prompts=[PromptRecord(text=prompt) for prompt in PPO_PROMPTS],
        score=says_the_target_word,
        run_dir=run_dir,
    )


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def assert_learned(metrics: list[dict]) -> None:
    scores = [entry["score_mean"] for entry in metrics]
    early, late = mean(scores[:3]), mean(scores[-4:])
    # About one completion in five says "good" at first; the trained policy says it nearly always.
    assert early < 0.5 and late > 0.75 and late > early + 0.3, scores
    assert all(math.isfinite(entry["kl"]) for entry in metrics)
    assert metrics[0]["kl"] == 0.0  # step 1 samples from the reference itself: k1 is exactly 0
    assert metrics[-1]["kl"] > 0.0


def test_ppo_raises_the_mean_score_of_a_served_classifier_while_the_kl_stays_finite(
    ppo_task, reward_server, tmp_path: Path, one_torch_thread
):
    run_dir = tmp_path / "run"
    config = PPOConfig(steps=20, checkpoint_every=0, sample_every=5, **PPO_TASK_SETTINGS)
    reward = RemoteReward(reward_server.url)
    try:
        trainer = PPOTrainer(
            config,
            policy_source=ppo_task.policy,
            score=reward,
            run_dir=run_dir,
            prompts=read_prompts(ppo_task.prompts),
            run_info={"test": True},
        )
        policy_folder = trainer.train()
    finally:
        reward.close()

    metrics = read_metrics(run_dir)
    assert [entry["step"] for entry in metrics] == list(range(1, 21))
    assert all(set(entry) >= STEP_METRICS for entry in metrics)
    assert_learned(metrics)
    assert (run_dir / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert [sample["step"] for sample in samples] == [5] * 4 + [10] * 4 + [15] * 4 + [20] * 4
    assert {"prompt", "completion", "score"} <= set(samples[0])

    # The saved folder is the trained policy, loadable as any Hugging Face model.
    model, tokenizer = load_policy(policy_folder)
    prompts = encode_prompts(read_prompts(ppo_task.prompts), tokenizer)
    torch.manual_seed(0)
    generation = generate_responses(
        model, tokenizer, [p.input_ids for p in prompts] * 8, max_new_tokens=6, temperature=1.0
    )
    saying_it = mean([PPO_TARGET_WORD in text.split() for text in generation.completions])
    assert saying_it > 0.75


def test_two_processes_through_accelerate_launch_share_the_batch_and_learn_together(
    ppo_task, reward_server, tmp_path: Path
):
    run_dir = tmp_path / "run"
    launch = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "--num_cpu_threads_per_process",
        "1",
        "-m",
        "policy_trainer.cli",
    ]
    # Each process rolls out 16 prompts a step: the same 32 a step as in one process.
    args = ppo_task.cli_args(
        reward_server.url, run_dir, steps=14, batch_size=16, num_mini_batches=1, checkpoint_every=7
    )
    result = subprocess.run(
        [*launch, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    metrics = read_metrics(run_dir)
    assert [entry["step"] for entry in metrics] == list(range(1, 15))
    assert all(entry["batch_size"] == 32 for entry in metrics)  # gathered from both processes
    assert metrics[-1]["episodes"] == 14 * 32
    assert_learned(metrics)
    # Each process has its own random stream (seed + process index), saved for resuming.
    checkpoint = latest_checkpoint(run_dir)
    first, second = load_rng_state(checkpoint, 0), load_rng_state(checkpoint, 1)
    assert not torch.equal(first["torch"], second["torch"])
    assert (run_dir / "policy" / "model.safetensors").is_file()
    # The run records what the reward model does with what it is sent.
    mapping = json.loads((run_dir / "run.json").read_text())["reward_model"]["mapping"]
    assert (mapping["input_format"], mapping["template"]) == ("template", "{prompt}{completion}")


def test_completions_go_as_prompt_completion_pairs_or_as_one_text(reward_server):
    prompts, completions = ["the movie was", "a film"], [" good", " bad plot"]
    with RewardClient(reward_server.url) as client:
        as_pairs = client.score(prompts=prompts, completions=completions)
        as_texts = client.score(texts=["the movie was good", "a film bad plot"])
    pairs, text = RemoteReward(reward_server.url), RemoteReward(reward_server.url, inputs="text")
    try:
        assert pairs(prompts, completions) == as_pairs
        assert text(prompts, completions) == as_texts
        assert as_pairs[0] > 0.5 > as_pairs[1]  # "good" is what the served classifier likes
    finally:
        pairs.close()
        text.close()


def test_lora_ppo_holds_one_copy_of_the_base_weights_and_its_reference_stays_the_base_model(
    ppo_task, reward_server, tmp_path: Path, one_torch_thread
):
    config = PPOConfig(steps=4, checkpoint_every=0, lora=LoraOptions(r=4), **PPO_TASK_SETTINGS)
    reward = RemoteReward(reward_server.url)
    trainer = PPOTrainer(
        config,
        policy_source=ppo_task.policy,
        score=reward,
        run_dir=tmp_path / "run",
        prompts=read_prompts(ppo_task.prompts),
    )
    base, tokenizer = load_policy(ppo_task.policy)

    # Every tensor the trainer holds, counted once per storage: the base weights once, plus the
    # adapters and the value head (LoRA puts the value head on the policy's trunk).
    held = [
        *trainer.module.parameters(),
        *(trainer.reference.parameters() if trainer.reference is not None else []),
    ]
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in held}
    adapters = sum(p.numel() for name, p in trainer.policy.named_parameters() if "lora_" in name)
    head = base.config.hidden_size + 1
    assert adapters > 0
    assert sum(storages.values()) == 4 * (
        sum(p.numel() for p in base.parameters()) + adapters + head
    )

    try:
        folder = trainer.train()
        assert read_metrics(tmp_path / "run")[-1]["kl"] > 0  # the adapters moved the policy
        # The trained adapters, as the run's last checkpoint holds them.
        resumed = PPOTrainer(
            config,
            policy_source=ppo_task.policy,
            score=reward,
            run_dir=tmp_path / "run",
            prompts=read_prompts(ppo_task.prompts),
            resume=True,
        )
    finally:
        reward.close()
    prompts = encode_prompts(read_prompts(ppo_task.prompts), tokenizer)
    torch.manual_seed(0)
    generation = generate_responses(
        base, tokenizer, [p.input_ids for p in prompts], max_new_tokens=6, temperature=1.0
    )
    base_logprobs, _ = response_logprobs(base, generation, temperature=1.0)
    trained_logprobs, _ = response_logprobs(resumed.policy, generation, temperature=1.0)
    assert not torch.allclose(trained_logprobs, base_logprobs, atol=1e-3)
    # The reference is still exactly the base model: its adapters are switched off for it.
    reference_logprobs = resumed.experience_maker.reference_logprobs(generation)
    torch.testing.assert_close(reference_logprobs, base_logprobs)
    # The saved policy is a plain model with the adapters merged into its weights.
    saved, _ = load_policy(folder)
    assert not any("lora" in name for name, _ in saved.named_parameters())
    saved_logprobs, _ = response_logprobs(saved, generation, temperature=1.0)
    torch.testing.assert_close(saved_logprobs, trained_logprobs, atol=1e-5, rtol=0)


def test_the_optional_settings_shape_scores_adapt_beta_and_accumulate_gradients(
    ppo_task, reward_server, tmp_path: Path, one_torch_thread
):
    settings = {**PPO_TASK_SETTINGS, "num_mini_batches": 2, "gradient_accumulation_steps": 2}
    config = PPOConfig(
        steps=3, checkpoint_every=3, kl_controller="adaptive", kl_estimator="k3",
        whiten_rewards=True, score_scaling="mean_std", score_clip=3.0, missing_eos_penalty=0.5,
        value_model="shared", **settings,
    )  # fmt: skip
    reward = RemoteReward(reward_server.url)
    try:
        prompts = read_prompts(ppo_task.prompts)
        trainer = PPOTrainer(config, policy_source=ppo_task.policy, score=reward,
                             run_dir=tmp_path / "run", prompts=prompts)  # fmt: skip
        trainer.train()
    finally:
        reward.close()
    metrics = read_metrics(tmp_path / "run")
    assert all(math.isfinite(value) for entry in metrics for value in entry.values())
    # Step 1's KL (0) is under the target: beta shrinks by the clipped 20% times 32 / horizon.
    assert metrics[0]["beta"] == 0.2
    assert metrics[1]["beta"] == pytest.approx(0.2 * (1 - 0.2 * 32 / 10_000), rel=1e-12)
    state = load_state(latest_checkpoint(tmp_path / "run"))
    assert state["score_moments"]["count"] == 3 * 32  # every score seen feeds the scaling


def test_at_a_temperature_step_one_has_no_kl_and_its_update_starts_from_the_rollout_policy(
    word_lm: Path, tmp_path: Path, one_torch_thread
):
    """Rollout, reference and update passes divide the logits by the same temperature: step 1
    samples from the reference itself (KL 0), and its one update starts where the rollout left
    the policy (ratio 1: approx KL 0, nothing clipped)."""
    settings = {"temperature": 0.5, "batch_size": 8, "num_mini_batches": 1, "ppo_epochs": 1}
    trainer = in_process_trainer(word_lm, tmp_path / "run", **settings)
    try:
        metrics = trainer.ppo_step(1)
    finally:
        trainer.scorer.close()
    assert metrics["kl"] == 0.0  # policy and reference: the same weights, the same passes
    # The update's pass and the rollout's differ only by float32 rounding (log-probs ~1e-7
    # apart): approx KL, half their squared difference, is ~1e-14 where they agree.
    assert metrics["approx_kl"] < 1e-10
    assert metrics["policy_clip_fraction"] == 0.0


def test_two_half_micro_batches_make_the_update_of_one_whole_minibatch(
    word_lm: Path, tmp_path: Path, one_torch_thread
):
    """Gradient accumulation sums each micro-batch's share of the minibatch's token mean, and
    the optimiser steps once per minibatch, not per micro-batch. Responses of several lengths
    (up to 16 tokens, most ending earlier) give micro-batches of unequal token counts, where a
    plain mean of micro-batch means would weigh tokens unequally."""
    runs = {}
    for accumulation in (1, 2):
        trainer = in_process_trainer(
            word_lm, tmp_path / f"accumulate-{accumulation}", batch_size=8, num_mini_batches=2,
            ppo_epochs=1, gradient_accumulation_steps=accumulation, max_new_tokens=16,
        )  # fmt: skip
        trained = [p for p in trainer.module.parameters() if p.requires_grad]
        gradients: list[list[torch.Tensor]] = []  # at each optimiser step

        def record(optimizer, args, kwargs, trained=trained, gradients=gradients) -> None:
            gradients.append([torch.zeros_like(p) if p.grad is None else p.grad.clone()
                              for p in trained])  # fmt: skip

        trainer.optimizer.optimizer.register_step_pre_hook(record)
        try:
            metrics = trainer.ppo_step(1)
        finally:
            trainer.scorer.close()
        assert 0 < metrics["eos_fraction"] < 1  # some responses end early, some run to the limit
        runs[accumulation] = gradients, [p.detach().clone() for p in trained]

    (whole, whole_parameters), (halves, half_parameters) = runs[1], runs[2]
    assert len(whole) == len(halves) == 2  # two minibatches, one optimiser step each
    # The same sums in another order: float32 rounding, far below 1e-6 for values of order 1.
    for step_whole, step_halves in zip(whole, halves, strict=True):
        for gradient_whole, gradient_halves in zip(step_whole, step_halves, strict=True):
            torch.testing.assert_close(gradient_halves, gradient_whole, atol=1e-6, rtol=0)
    for parameter_whole, parameter_halves in zip(whole_parameters, half_parameters, strict=True):
        torch.testing.assert_close(parameter_halves, parameter_whole, atol=1e-6, rtol=0)


# Both processes' KL controllers must move beta the same way: adaptive, with a target near the
# KL these runs reach, which keeps its error inside the controller's clip, where each process's
# own KL would move beta differently.
AGREEMENT_SETTINGS = {"batch_size": 8, "num_mini_batches": 2, "checkpoint_every": 0,
                      "kl_controller": "adaptive", "kl_target": 0.5, "kl_horizon": 100}  # fmt: skip


def assert_both_processes_trained_alike(policy: Path, out: Path, steps: int) -> None:
    """Processes 0 and 1 of a run of ppo_process.py ended at step `steps` with the same KL
    coefficient and trainable parameters (OUT/rank-K.pt), and training moved them."""
    first, second = (torch.load(out / f"rank-{rank}.pt") for rank in (0, 1))
    assert first["step"] == second["step"] == steps
    assert first["beta"] == second["beta"] != 0.2  # identical, and moved by the controller
    assert first["parameters"].keys() == second["parameters"].keys()
    # Bit for bit: the same averaged gradient goes through the same optimiser arithmetic.
    for name, parameter in first["parameters"].items():
        torch.testing.assert_close(second["parameters"][name], parameter, atol=0, rtol=0, msg=name)
    initial, _ = load_policy(policy)
    moved = first["parameters"]["policy.model.embed_tokens.weight"]
    assert not torch.equal(moved, initial.model.embed_tokens.weight)  # training did happen


def test_two_processes_end_with_the_same_parameters_and_kl_coefficient(
    word_lm: Path, tmp_path: Path
):
    """DDP averages the gradients, so both processes take the same steps; the adaptive KL
    controller follows the KL of the whole batch (both processes' rollouts), so both hold the
    same beta."""
    settings = {**AGREEMENT_SETTINGS, "steps": 4}
    result = launch_ppo_processes(word_lm, tmp_path / "run", tmp_path / "out", settings)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_both_processes_trained_alike(word_lm, tmp_path / "out", steps=4)


def test_two_machines_of_one_process_each_end_with_the_same_parameters_and_kl_coefficient(
    word_lm: Path, tmp_path: Path
):
    """Two machines on loopback, each its own `accelerate launch --num_machines 2 --machine_rank
    R`, meeting through the c10d rendezvous: the gradient all-reduce and the whole batch's KL
    reach across machines as across the processes of one."""
    settings = {**AGREEMENT_SETTINGS, "steps": 2}
    results = launch_ppo_machines(word_lm, tmp_path / "run", tmp_path / "out", settings)
    for machine_rank, result in enumerate(results):
        assert result.returncode == 0, f"machine {machine_rank}:\n{result.stderr[-3000:]}"
    assert_both_processes_trained_alike(word_lm, tmp_path / "out", steps=2)
