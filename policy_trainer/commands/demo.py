"""`policy-trainer demo`: the whole RLHF process on real models (see policy_trainer.demo)."""

from __future__ import annotations

import argparse

from policy_trainer.config import DemoOptions, settings_from_args
from reward_service.flags import add_settings_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, DemoOptions)


def run(args: argparse.Namespace) -> int:
    from policy_trainer.demo import run_demo

    return run_demo(settings_from_args(args, DemoOptions))
