"""The reward-service flags that `evaluate` and `sample` share (each adds its own --reward-url:
required for one, optional for the other)."""

from __future__ import annotations

import argparse


def add_reward_arguments(parser: argparse.ArgumentParser) -> None:
    """--reward-model, --reward-inputs and --reward-max-wait-s."""
    parser.add_argument("--reward-model", default=None, help="served model name; default: first")
    parser.add_argument(
        "--reward-inputs",
        choices=["pairs", "text"],
        default="pairs",
        help="pairs: send prompt and completion apart (the server joins them); text: as one text",
    )
    parser.add_argument(
        "--reward-max-wait-s",
        type=float,
        default=120.0,
        help="give up on a batch's scoring, retries included, after this many seconds "
        "(default %(default)s)",
    )
