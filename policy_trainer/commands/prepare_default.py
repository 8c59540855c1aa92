"""`policy-trainer prepare_default` (not built yet)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("policy-trainer: this command is not built yet", file=sys.stderr)
    return 2
