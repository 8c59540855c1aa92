"""`policy-trainer`: SFT and PPO for causal language models.

Each subcommand lives in its own module under `policy_trainer.commands`, which defines
`add_arguments(parser)` and `run(args) -> int`. Modules import torch inside `run`, so that
`policy-trainer --help` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from policy_trainer.config import ConfigError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ppo": ("policy_trainer.commands.ppo", "train a policy with PPO against a remote reward"),
    "sft": ("policy_trainer.commands.sft", "supervised fine-tuning on demonstrations"),
    "evaluate": ("policy_trainer.commands.evaluate", "score a policy on held-out prompts"),
    "sample": (
        "policy_trainer.commands.sample",
        "K completions per prompt, sampled as PPO samples, for people to rank",
    ),
    "demo": (
        "policy_trainer.commands.demo",
        "the whole RLHF process on real models: reward model, SFT, PPO, before/after table",
    ),
    "demo-data": (
        "policy_trainer.commands.demo_data",
        "write the demo's SFT demonstrations and prompts from the VADER movie snippets",
    ),
    "prepare-default": (
        "policy_trainer.commands.prepare_default",
        "convert the default policy (SmolLM2-135M-Instruct, GGUF) into a Hugging Face folder",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="policy-trainer", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:  # refused settings, whichever the command: one message, exit 2
        print(f"policy-trainer {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
