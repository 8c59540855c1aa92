"""`policy-trainer demo`: the whole RLHF process on real models (see policy_trainer.demo)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from policy_trainer.demo import DemoOptions

    defaults = DemoOptions(run_dir=Path("runs/demo"))
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=defaults.run_dir,
        help="where everything is written (default %(default)s)",
    )
    parser.add_argument(
        "--ppo-steps",
        type=int,
        default=defaults.ppo_steps,
        help="PPO steps of 32 prompts (default %(default)s)",
    )
    parser.add_argument(
        "--sft-epochs",
        type=float,
        default=defaults.sft_epochs,
        help="epochs of SFT on positive snippets first; 0: none (default %(default)s)",
    )
    parser.add_argument(
        "--eval-prompts",
        type=int,
        default=defaults.eval_prompts,
        help="held-out prompts for the before/after table (default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=defaults.port,
        help="the reward server's loopback port (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--ppo-arg",
        dest="ppo_args",
        action="append",
        default=[],
        metavar="--FLAG=VALUE",
        help="passed on to `policy-trainer ppo`, e.g. --ppo-arg=--kl-coef=0.1",
    )


def run(args: argparse.Namespace) -> int:
    from policy_trainer.demo import DemoOptions, run_demo

    return run_demo(
        DemoOptions(
            run_dir=args.run_dir,
            ppo_steps=args.ppo_steps,
            sft_epochs=args.sft_epochs,
            eval_prompts=args.eval_prompts,
            port=args.port,
            seed=args.seed,
            ppo_args=args.ppo_args,
        )
    )
