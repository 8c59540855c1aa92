"""`policy-trainer prepare-default`: convert the default policy once, and print its folder.

SFT, PPO and evaluation do this on first use of ``--model default``; running it ahead keeps the
~30 s conversion out of a timed run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where converted models are kept (default: $REWARD_SERVICE_CACHE, else "
        "~/.cache/reward-service); the folder is CACHE_DIR/models/<name>",
    )
    parser.add_argument(
        "--force", action="store_true", help="convert again even if the folder exists"
    )


def run(args: argparse.Namespace) -> int:
    from policy_trainer.models import PolicyLoadError, default_policy_folder

    try:
        folder = default_policy_folder(args.cache_dir, force=args.force)
    except PolicyLoadError as error:
        print(f"policy-trainer: {error}", file=sys.stderr)
        return 2
    print(folder)
    return 0
