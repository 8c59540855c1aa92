"""`policy-trainer demo-data`: write the demo's SFT demonstrations and prompts (see
policy_trainer.demo_data), and print the three files."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from policy_trainer import demo_data

    parser.add_argument("--output-dir", type=Path, required=True, help="where the files go")
    parser.add_argument(
        "--min-rating",
        type=float,
        default=demo_data.DEFAULT_MIN_RATING,
        help="SFT demonstrations: train-split snippets whose raters' mean (-4..+4) is at least "
        "this (default %(default)s)",
    )
    parser.add_argument(
        "--prompt-words",
        type=int,
        nargs=2,
        default=list(demo_data.DEFAULT_PROMPT_WORDS),
        metavar=("MIN", "MAX"),
        help="an opening is MIN to MAX words (default %(default)s)",
    )
    parser.add_argument(
        "--eval-prompts",
        type=int,
        default=demo_data.DEFAULT_EVAL_PROMPTS,
        help="test-split openings kept apart from PPO for evaluation (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=demo_data.DEFAULT_SEED)


def run(args: argparse.Namespace) -> int:
    from policy_trainer.demo_data import write_demo_data

    files = write_demo_data(
        args.output_dir,
        min_rating=args.min_rating,
        prompt_words=tuple(args.prompt_words),
        eval_prompts=args.eval_prompts,
        seed=args.seed,
    )
    for path in (files.sft_demonstrations, files.ppo_prompts, files.eval_prompts):
        lines = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{path}\t{lines} lines")
    return 0
