"""The reward-service flags that `evaluate`, `sample` and `ppo` share (each adds its own
--reward-url: required for some, optional for others)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path


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


def add_reward_access_arguments(parser: argparse.ArgumentParser) -> None:
    """--api-key and --reward-ca-file, from the environment by default."""
    parser.add_argument(
        "--api-key",
        default=os.environ.get("REWARD_SERVICE_API_KEY"),
        help="the reward service's API key (default: $REWARD_SERVICE_API_KEY)",
    )
    parser.add_argument(
        "--reward-ca-file",
        type=Path,
        default=os.environ.get("REWARD_SERVICE_CA_FILE"),
        help="PEM CA certificates that verify an https:// or grpcs:// reward service (default: "
        "$REWARD_SERVICE_CA_FILE, else the system's CAs)",
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
