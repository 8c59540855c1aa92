"""The policy trainer in TRL's words: a TRL-style PPO YAML runs `policy-trainer ppo`, TRL's key
names and flags set our fields (and keys whose meaning differs are refused, saying what to give),
the learning rate follows `transformers.get_scheduler`'s schedules, and `--report-to tensorboard`
writes event files tensorboard's own reader loads."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import PPO_PROMPTS, REPO_ROOT, build_word_level_lm

from policy_trainer import cli
from policy_trainer.config import ConfigError, PPOConfig, build_config
from policy_trainer.prompts import PromptRecord, read_prompts
from policy_trainer.run_log import read_metrics
from policy_trainer.sft import SFTDataError, read_demonstrations
from policy_trainer.trainer import TRACKER_LOGS_DIRNAME, TRACKER_PROJECT, PPOTrainer
from reward_service.flags import settings_overrides

# A PPO config as TRL's PPOConfig spells it (TRL's names only), small enough for two CPU steps.
TRL_YAML = {
    "cliprange": 0.25,
    "cliprange_value": 0.3,
    "kl_coef": 0.07,
    "kl_estimator": "k3",
    "num_ppo_epochs": 1,
    "response_length": 5,
    "vf_coef": 0.2,
    "gamma": 0.99,
    "lam": 0.9,
    "whiten_rewards": True,
    "learning_rate": 3.0e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 1,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_mini_batches": 2,
    "local_rollout_forward_batch_size": 8,
    "temperature": 1.0,
    "seed": 3,
    "save_steps": 1,
    "save_total_limit": 1,
    "bf16": False,
    "report_to": ["tensorboard"],
}
# What those are in our names.
OURS = {
    "clip_range": 0.25,
    "value_clip_range": 0.3,
    "kl_coef": 0.07,
    "kl_estimator": "k3",
    "ppo_epochs": 1,
    "max_new_tokens": 5,
    "vf_coef": 0.2,
    "gamma": 0.99,
    "lam": 0.9,
    "whiten_rewards": True,
    "learning_rate": 3.0e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 1,
    "batch_size": 8,  # TRL's local batch: 4 per micro-batch x 1 accumulation x 2 minibatches
    "gradient_accumulation_steps": 1,
    "num_mini_batches": 2,
    "rollout_forward_batch_size": 8,
    "temperature": 1.0,
    "seed": 3,
    "checkpoint_every": 1,
    "keep_checkpoints": 1,
    "mixed_precision": "no",
    "report_to": "tensorboard",
}


@pytest.fixture(scope="module")
def reward_server(server_factory, ppo_task):
    return server_factory(["--model", f"rm={ppo_task.classifier}"])


def test_trl_key_names_in_a_config_file_set_the_same_settings_as_ours(tmp_path: Path):
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(TRL_YAML))
    assert build_config(path) == PPOConfig(**OURS)


def test_trl_flag_spellings_set_our_fields_and_override_the_file(tmp_path: Path):
    path = tmp_path / "ours.yaml"
    path.write_text(yaml.safe_dump({"clip_range": 0.1}))
    args = cli.build_parser().parse_args(
        ["ppo", "--cliprange", "0.3", "--num-ppo-epochs", "2", "--response-length", "7",
         "--lr-scheduler-type", "constant", "--cliprange-value", "0.05"]
    )  # fmt: skip
    config = build_config(path, settings_overrides(args, PPOConfig))
    assert (config.clip_range, config.ppo_epochs, config.max_new_tokens) == (0.3, 2, 7)
    assert (config.lr_schedule, config.value_clip_range) == ("constant", 0.05)


@pytest.mark.parametrize(
    ("trl_settings", "message"),
    [
        ({"total_episodes": 10_000}, r"total_episodes is not taken: .*give steps"),
        ({"num_sample_generations": 5}, r"num_sample_generations is not taken: .*sample_every"),
        ({"stop_token": "eos"}, r"stop_token is not taken: .*EOS"),
        ({"fp16": True}, r"fp16 is not taken"),
        ({"reward_model_path": "rm"}, r"reward_model_path is not taken: .*--reward-url"),
        (
            {"per_device_train_batch_size": 4, "batch_size": 8},
            r"batch_size or TRL's per_device_train_batch_size, not both",
        ),
        ({"exp_name": "ppo"}, r"exp_name: Extra inputs are not permitted"),
    ],
)
def test_trl_keys_whose_meaning_differs_here_are_refused_saying_what_to_give(
    tmp_path: Path, trl_settings: dict, message: str
):
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(trl_settings))
    with pytest.raises(ConfigError, match=message):
        build_config(path)


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_word_level_lm(tmp_path_factory.mktemp("schedules") / "policy")


def schedule_of(policy: Path, run_dir: Path, **settings) -> list[float]:
    """The learning rate of each step of a run with `settings`, from the trainer's scheduler."""
    config = PPOConfig(steps=4, learning_rate=1.0, batch_size=4, checkpoint_every=0, **settings)
    trainer = PPOTrainer(
        config,
        policy_source=policy,
        prompts=[PromptRecord(text=prompt) for prompt in PPO_PROMPTS],
        score=lambda prompts, completions: [0.0] * len(completions),
        run_dir=run_dir,
    )
    rates = []
    try:
        for _ in range(config.steps):
            rates.append(trainer.scheduler.get_last_lr()[0])
            trainer.scheduler.step()
    finally:
        trainer.scorer.close()
    return rates


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # The default, as the hand-written schedule before it: linear from 1 to 0 over the run.
        ({}, [1.0, 0.75, 0.5, 0.25]),
        ({"lr_schedule": "constant"}, [1.0, 1.0, 1.0, 1.0]),
        ({"lr_schedule": "constant", "warmup_ratio": 0.5}, [0.0, 0.5, 1.0, 1.0]),
        ({"lr_schedule": "linear", "warmup_steps": 2}, [0.0, 0.5, 1.0, 0.5]),
        # Half a cosine over the 3 steps after the warm-up: (1 + cos(pi * k / 3)) / 2.
        (
            {"lr_schedule": "cosine", "warmup_steps": 1},
            [0.0, 1.0, (1 + math.cos(math.pi / 3)) / 2, (1 + math.cos(2 * math.pi / 3)) / 2],
        ),
    ],
    ids=["default-linear", "constant", "constant-warmup-ratio", "linear-warmup", "cosine-warmup"],
)
def test_the_learning_rate_follows_the_chosen_schedule_after_its_warm_up(
    word_lm: Path, tmp_path: Path, settings: dict, expected: list[float]
):
    # get_scheduler's factors are float arithmetic on step counts: equal to 1e-12.
    assert schedule_of(word_lm, tmp_path / "run", **settings) == pytest.approx(expected, abs=1e-12)


def test_report_to_a_tracker_that_is_not_installed_is_refused_before_training(
    tmp_path: Path,
):
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    config = PPOConfig(report_to="wandb", steps=1)
    with pytest.raises(ConfigError, match=r"the wandb package is not installed \(pip install"):
        PPOTrainer(
            config, policy_source=tmp_path / "none", prompts=[], score=lambda p, c: [],
            run_dir=tmp_path / "run",
        )  # fmt: skip


def test_a_trl_style_ppo_yaml_runs_policy_trainer_ppo_for_two_steps_logging_to_tensorboard(
    ppo_task, reward_server, tmp_path: Path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config_path = tmp_path / "trl-ppo.yaml"
    config_path.write_text(yaml.safe_dump(TRL_YAML))
    run_dir = tmp_path / "run"
    command = [
        str(Path(sys.executable).parent / "policy-trainer"), "ppo",
        "--policy", str(ppo_task.policy), "--reward-url", reward_server.url,
        "--prompts", str(ppo_task.prompts), "--output-dir", str(run_dir),
        "--config", str(config_path), "--steps", "2",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]

    recorded = json.loads((run_dir / "run.json").read_text())["config"]
    assert {name: recorded[name] for name in OURS} == OURS
    metrics = read_metrics(run_dir)
    assert [entry["step"] for entry in metrics] == [1, 2]
    # Cosine after one warm-up step, over two steps: 0, then the full rate.
    assert [entry["learning_rate"] for entry in metrics] == pytest.approx([0.0, 3.0e-3], abs=1e-12)

    events = EventAccumulator(str(run_dir / TRACKER_LOGS_DIRNAME / TRACKER_PROJECT))
    events.Reload()
    assert {"score_mean", "kl", "policy_loss", "learning_rate"} <= set(events.Tags()["scalars"])
    for name in ("score_mean", "kl", "learning_rate"):
        logged = events.Scalars(name)
        assert [event.step for event in logged] == [1, 2]
        # tensorboard stores float32: equal to metrics.jsonl to float32's precision.
        expected = [entry[name] for entry in metrics]
        assert [event.value for event in logged] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_sft_reads_trls_prompt_completion_rows_as_prompt_response_ones(tmp_path: Path):
    trl_rows, our_rows = tmp_path / "trl.jsonl", tmp_path / "ours.jsonl"
    trl_rows.write_text(json.dumps({"prompt": "This movie is", "completion": " a delight."}))
    our_rows.write_text(json.dumps({"prompt": "This movie is", "response": " a delight."}))
    assert read_demonstrations(trl_rows) == read_demonstrations(our_rows)
    assert read_demonstrations(trl_rows)[0].response == " a delight."


def test_prompts_and_demonstrations_read_from_parquet_and_json_arrays_as_from_jsonl(
    tmp_path: Path,
):
    from datasets import Dataset

    prompts = [{"prompt": "The film was"}, {"prompt": "A story"}]
    demonstrations = [
        {"prompt": "This movie is", "completion": " a delight."},
        {"prompt": "The plot", "completion": " moved."},
    ]
    for rows, name in ((prompts, "prompts"), (demonstrations, "demos")):
        Dataset.from_list(rows).to_parquet(str(tmp_path / f"{name}.parquet"))
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    expected_prompts = read_prompts(tmp_path / "prompts.jsonl")
    assert [record.text for record in expected_prompts] == ["The film was", "A story"]
    expected_demonstrations = read_demonstrations(tmp_path / "demos.jsonl")
    for suffix in (".parquet", ".json"):
        assert read_prompts(tmp_path / f"prompts{suffix}") == expected_prompts
        assert read_demonstrations(tmp_path / f"demos{suffix}") == expected_demonstrations


def test_a_bad_row_of_a_parquet_file_is_named_by_its_row(tmp_path: Path):
    from datasets import Dataset

    path = tmp_path / "demos.parquet"
    Dataset.from_list(
        [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": ""}]
    ).to_parquet(str(path))
    with pytest.raises(SFTDataError, match=r"demos\.parquet row 2: .*response"):
        read_demonstrations(path)
