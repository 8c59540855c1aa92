"""`policy-trainer evaluate`: score a policy's samples on held-out prompts (see
policy_trainer.evaluation); print the figures and a few samples, and write them all as JSON."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from policy_trainer.commands.reward_flags import add_reward_arguments, command_failure
from policy_trainer.config import EvaluationSettings, settings_from_args
from reward_service.flags import add_settings_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", required=True, help="a local causal-LM folder, or 'default' (SmolLM2-135M)"
    )
    parser.add_argument(
        "--reward-url",
        required=True,
        nargs="+",
        metavar="URL",
        help="the reward service: http://HOST:PORT or grpc://HOST:PORT (several: replicas)",
    )
    parser.add_argument(
        "--prompts",
        type=Path,
        required=True,
        help='JSONL {"prompt": ...} (or {"messages": [...]}) or plain text, one prompt a line',
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="a policy to measure KL(policy || reference) against, e.g. the one PPO started from",
    )
    add_reward_arguments(parser)
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("evaluation.json"),
        help="where the figures and every sample are written (default %(default)s)",
    )
    parser.add_argument("--show", type=int, default=3, help="samples printed (default %(default)s)")
    add_settings_arguments(parser, EvaluationSettings)


def run(args: argparse.Namespace) -> int:
    from policy_trainer.evaluation import evaluate_policy
    from policy_trainer.rollout import RemoteReward

    settings = settings_from_args(args, EvaluationSettings)
    reward = RemoteReward(
        args.reward_url,
        model=args.reward_model,
        inputs=args.reward_inputs,
        api_key=os.environ.get("REWARD_SERVICE_API_KEY"),
        ca_file=os.environ.get("REWARD_SERVICE_CA_FILE"),
        max_wait_s=args.reward_max_wait_s,
    )
    try:
        result = evaluate_policy(
            args.policy, args.prompts, reward, reference_source=args.reference, settings=settings
        )
    except Exception as error:
        status = command_failure("evaluate", error, args.reward_url)
        if status is None:
            raise
        return status
    finally:
        reward.close()

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n")
    print(
        f"{result.policy}: {result.responses} responses to {result.prompts} prompts, temperature "
        f"{settings.temperature:g}, at most {settings.max_new_tokens} new tokens"
    )
    print(f"  score            mean {result.score_mean:.4f}  std {result.score_std:.4f}")
    if result.kl_mean is not None:
        print(
            f"  KL to reference  mean {result.kl_mean:.4f}  std {result.kl_std:.4f} "
            f"nats per sequence ({result.reference})"
        )
    print(
        f"  response length  mean {result.response_length_mean:.1f} tokens "
        f"({result.truncated_fraction:.0%} cut at --max-new-tokens)"
    )
    for sample in result.samples[: args.show]:
        print(f"  [{sample['score']:+.3f}] {sample['prompt']}|{sample['completion']}")
    print(args.output)
    return 0
