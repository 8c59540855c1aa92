"""`policy-trainer ppo`: train a policy with PPO against a remote reward model.

    policy-trainer ppo --policy DIR --reward-url http://127.0.0.1:8000 --prompts prompts.jsonl \\
        --output-dir runs/ppo-1 --steps 200 [--config ppo.yaml] [--learning-rate 3e-6 ...]
    policy-trainer ppo --resume runs/ppo-1            # after a stop, a crash or an outage
    accelerate launch --multi_gpu --num_processes 2 -m policy_trainer.cli ppo ...   # data parallel

Exit status: 0 when the run finished, 2 for unusable settings or inputs, 75 when it stopped early
(the reward service was unreachable past --reward-max-wait-s, or refused a batch) after saving a
checkpoint; the message says how to continue.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from policy_trainer.commands.reward_flags import add_reward_access_arguments
from policy_trainer.config import ConfigError, PPOConfig, build_config, settings_overrides
from reward_service.flags import add_settings_arguments

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: a temporary failure; try again later (with --resume)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--policy", help="the policy: a Hugging Face folder, or 'default'")
    parser.add_argument(
        "--reward-url",
        dest="reward_urls",
        action="append",
        metavar="URL",
        help="reward service endpoint (http:// or grpc://); repeat for replicas",
    )
    parser.add_argument(
        "--prompts", type=Path, help="JSONL ({'prompt': ...} or chat messages) or text, one a line"
    )
    parser.add_argument("--output-dir", type=Path, help="the run folder (must not hold a run)")
    parser.add_argument("--config", type=Path, help="YAML or JSON file of PPO settings")
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its latest checkpoint, with its "
        "settings; only --reward-url may change",
    )
    add_reward_access_arguments(parser)
    add_settings_arguments(
        parser, PPOConfig, "PPO settings (override --config; defaults in brackets)"
    )


def run(args: argparse.Namespace) -> int:
    from policy_trainer.models import PolicyLoadError
    from policy_trainer.prompts import PromptFileError, read_prompts
    from policy_trainer.rollout import RemoteReward
    from policy_trainer.run_log import read_run_info
    from policy_trainer.trainer import PPOTrainer, TrainingStopped

    _configure_logging()
    try:
        if args.resume is not None:
            overrides = settings_overrides(args, PPOConfig)
            given = [
                name
                for name in ("policy", "prompts", "output_dir", "config")
                if getattr(args, name) is not None
            ]
            if overrides or given:
                flags = [f"--{name.replace('_', '-')}" for name in [*given, *overrides]]
                raise ConfigError(
                    f"--resume takes its settings from the run folder; drop {', '.join(flags)}"
                )
            run_dir = args.resume
            info = read_run_info(run_dir)
            config = PPOConfig(**info["config"])
            policy, prompts_path = info["policy"], Path(info["prompts"])
            reward_urls = args.reward_urls or info["reward_urls"]
        else:
            missing = [
                flag
                for flag, value in (
                    ("--policy", args.policy),
                    ("--reward-url", args.reward_urls),
                    ("--prompts", args.prompts),
                    ("--output-dir", args.output_dir),
                )
                if not value
            ]
            if missing:
                raise ConfigError(f"missing {', '.join(missing)} (or give --resume RUN_DIR)")
            config = build_config(args.config, settings_overrides(args, PPOConfig))
            run_dir, policy, prompts_path = args.output_dir, args.policy, args.prompts
            reward_urls = args.reward_urls
        prompts = read_prompts(prompts_path)
    except (ConfigError, PromptFileError, FileNotFoundError) as error:
        print(f"policy-trainer ppo: {error}", file=sys.stderr)
        return 2

    reward = RemoteReward(
        reward_urls,
        model=config.reward_model,
        inputs=config.reward_inputs,
        timeout_s=config.reward_timeout_s,
        max_wait_s=config.reward_max_wait_s,
        api_key=args.api_key,
        ca_file=args.reward_ca_file,
    )
    run_info = {
        "config": config.model_dump(mode="json"),
        "policy": str(Path(policy).resolve()) if Path(policy).exists() else policy,
        "prompts": str(prompts_path.resolve()),
        "reward_urls": reward_urls,
        "reward_model": reward.describe(),
    }
    try:
        trainer = PPOTrainer(
            config,
            policy_source=policy,
            prompts=prompts,
            score=reward,
            run_dir=run_dir,
            resume=args.resume is not None,
            run_info=run_info,
        )
        folder = trainer.train()
    except (PolicyLoadError, PromptFileError, FileExistsError, FileNotFoundError) as error:
        print(f"policy-trainer ppo: {error}", file=sys.stderr)
        return 2
    except TrainingStopped as stop:
        print(f"policy-trainer ppo: stopped: {stop}", file=sys.stderr)
        return EXIT_RESUMABLE
    finally:
        reward.close()
    if trainer.is_main:
        print(f"policy-trainer ppo: done; the trained policy is in {folder}", file=sys.stderr)
    return 0


def _configure_logging() -> None:
    from transformers.utils import logging as transformers_logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    # Retries show, so that a restarting reward service is visible rather than a silent stall.
    logging.getLogger("reward_service.client").setLevel(logging.INFO)
    logging.getLogger("policy_trainer").setLevel(logging.INFO)
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # one bar: the run's
