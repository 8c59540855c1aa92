"""`policy-trainer demo-data`: write the demo's SFT demonstrations and prompts (see
policy_trainer.demo_data), and print the three files."""

from __future__ import annotations

import argparse
from pathlib import Path

from policy_trainer.config import DemoDataOptions, settings_from_args
from reward_service.flags import add_settings_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, required=True, help="where the files go")
    add_settings_arguments(parser, DemoDataOptions)


def run(args: argparse.Namespace) -> int:
    from policy_trainer.demo_data import write_demo_data

    options = settings_from_args(args, DemoDataOptions)
    files = write_demo_data(args.output_dir, **options.model_dump())
    for path in (files.sft_demonstrations, files.ppo_prompts, files.eval_prompts):
        lines = sum(1 for _ in path.open(encoding="utf-8"))
        print(f"{path}\t{lines} lines")
    return 0
