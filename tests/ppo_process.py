"""One process of a multi-process PPO run, for the tests that launch it with
`accelerate launch --num_processes 2 tests/ppo_process.py ...` (`launch_ppo_processes`): a short
run of the word-level policy, scored in-process by `says_the_target_word` (no reward service),
after which every process writes what it holds to OUT/rank-K.pt (its trainable parameters and
its KL coefficient), so that a test can compare the processes with each other and with another
run. `--settings` holds PPOConfig fields as JSON, over the task's. A run that stops
(`--fail-at-step`) writes the checkpoint it saved to OUT/rank-K.stopped instead.

    ppo_process.py POLICY RUN_DIR OUT [--settings JSON] [--fail-at-step N] [--resume]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from helpers import PPO_PROMPTS, PPO_TARGET_WORD, PPO_TASK_SETTINGS, REPO_ROOT, free_port


def says_the_target_word(prompts: list[str], completions: list[str]) -> list[float]:
    """The task's reward without a server: 1 for a completion that says the word, else 0."""
    return [float(PPO_TARGET_WORD in completion.split()) for completion in completions]


def launch_ppo_processes(
    policy: Path,
    run_dir: Path,
    out: Path,
    settings: dict,
    *options: str,
    processes: int = 2,
) -> subprocess.CompletedProcess:
    """Runs this file in `processes` processes under `accelerate launch` (gloo on CPU)."""
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        "--num_cpu_threads_per_process",
        "1",
        str(Path(__file__).resolve()),
        str(policy),
        str(run_dir),
        str(out),
        "--settings",
        json.dumps(settings),
        *options,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env
    )


def main() -> int:
    from policy_trainer.checkpoint import trainable_state
    from policy_trainer.config import PPOConfig
    from policy_trainer.prompts import PromptRecord
    from policy_trainer.trainer import PPOTrainer, TrainingStopped
    from reward_service.client import Unavailable

    parser = argparse.ArgumentParser()
    parser.add_argument("policy", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--settings", type=json.loads, default={})
    parser.add_argument("--fail-at-step", type=int, help="process 0's scoring fails at this step")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    config = PPOConfig(**{**PPO_TASK_SETTINGS, "samples_per_log": 0, **args.settings})

    rank = int(os.environ.get("RANK", "0"))
    calls = 0

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        nonlocal calls
        calls += 1
        if rank == 0 and calls == args.fail_at_step:
            raise Unavailable("the test's reward is down for this step")
        return says_the_target_word(prompts, completions)

    trainer = PPOTrainer(
        config,
        policy_source=args.policy,
        prompts=[PromptRecord(text=prompt) for prompt in PPO_PROMPTS],
        score=score,
        run_dir=args.run_dir,
        resume=args.resume,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        trainer.train()
    except TrainingStopped as stop:
        (args.out / f"rank-{trainer.rank}.stopped").write_text(str(stop.checkpoint))
        return 0
    state = {
        "parameters": trainable_state(trainer.accelerator.unwrap_model(trainer.module)),
        "beta": trainer.kl_controller.beta,
        "step": trainer.step,
    }
    torch.save(state, args.out / f"rank-{trainer.rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
