"""`policy-trainer sample`: K completions per prompt, sampled as PPO samples, written as JSON
Lines for people to rank (see policy_trainer.sample); with --reward-url, each completion's score
on the reward service is stored too (never shown to raters)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policy_trainer.commands.reward_flags import (
    add_reward_access_arguments,
    add_reward_arguments,
    command_failure,
)
from policy_trainer.config import SampleOptions, settings_from_args
from reward_service.flags import add_settings_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", required=True, help="a local causal-LM folder, or 'default' (SmolLM2-135M)"
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help='JSONL {"prompt": ...} (or {"messages": [...]}) or plain text, one prompt a line',
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="the JSONL file written, one line per prompt"
    )
    parser.add_argument(
        "--reward-url",
        dest="reward_urls",
        action="append",
        metavar="URL",
        help="score each completion on this reward service (http:// or grpc://; repeat for "
        "replicas); the scores are stored, never shown to raters",
    )
    add_reward_arguments(parser)
    add_reward_access_arguments(parser)
    add_settings_arguments(parser, SampleOptions)


def run(args: argparse.Namespace) -> int:
    from transformers.utils import logging as transformers_logging

    from policy_trainer.rollout import RemoteReward
    from policy_trainer.sample import sample_prompts, write_sample_file

    transformers_logging.disable_progress_bar()  # one bar: the sampling's
    options = settings_from_args(args, SampleOptions)
    reward = None
    if args.reward_urls:
        reward = RemoteReward(
            args.reward_urls,
            model=args.reward_model,
            inputs=args.reward_inputs,
            api_key=args.api_key,
            ca_file=args.reward_ca_file,
            max_wait_s=args.reward_max_wait_s,
        )
    try:
        lines = sample_prompts(args.policy, args.prompts, options, score=reward)
        write_sample_file(args.out, lines)
    except Exception as error:
        status = command_failure("sample", error, args.reward_urls)
        if status is None:
            raise
        return status
    finally:
        if reward is not None:
            reward.close()
    scored = ", scored on the reward service" if reward is not None else ""
    print(
        f"{len(lines)} prompts x {options.k} completions (temperature {options.temperature:g}, "
        f"at most {options.max_new_tokens} new tokens, seed {options.seed}){scored}",
        file=sys.stderr,
    )
    print(args.out)
    return 0
