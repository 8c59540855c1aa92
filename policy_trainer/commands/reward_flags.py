"""The reward-service flags that `evaluate` and `sample` share (each adds its own --reward-url:
required for one, optional for the other)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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


def command_failure(command: str, error: Exception, reward_urls: Sequence[str]) -> int | None:
    """For a failure `evaluate` or `sample` reports rather than raises (the reward service,
    the policy, the prompts, a file): prints it and returns the exit status 2; None for any
    other error, which the caller re-raises."""
    from policy_trainer.models import PolicyLoadError
    from policy_trainer.prompts import PromptFileError
    from reward_service.client import RewardClientError

    if isinstance(error, RewardClientError):
        message = f"scoring on {' '.join(reward_urls)} failed: {error}"
    elif isinstance(error, PolicyLoadError | PromptFileError | OSError):
        message = str(error)
    else:
        return None
    print(f"policy-trainer {command}: {message}", file=sys.stderr)
    return 2
