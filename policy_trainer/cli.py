"""`policy-trainer`: SFT and PPO for causal language models (in progress; see the issues)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="policy-trainer", description=__doc__)
    parser.add_argument("command", choices=["ppo", "sft"])
    args = parser.parse_args(argv)
    print(f"policy-trainer: '{args.command}' is not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
