"""`policy-trainer sft`: supervised fine-tuning on demonstrations (see policy_trainer.sft).

Writes a plain Hugging Face folder (LoRA adapters merged in) that `policy-trainer ppo` takes as
its policy, with ``sft_summary.json`` recording the options and the loss before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policy_trainer.config import SFTOptions, settings_from_args
from reward_service.flags import add_settings_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="default",
        help="a local causal-LM folder, or 'default' (SmolLM2-135M-Instruct, converted on first "
        "use; see prepare-default)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help='JSONL demonstrations: {"prompt": ..., "response": ...} or {"messages": [...]}',
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where the model is saved")
    add_settings_arguments(parser, SFTOptions)


def run(args: argparse.Namespace) -> int:
    from policy_trainer.models import PolicyLoadError
    from policy_trainer.sft import SFTDataError, train_sft

    options = settings_from_args(args, SFTOptions)
    try:
        result = train_sft(args.model, args.data, args.output_dir, options)
    except (SFTDataError, PolicyLoadError) as error:
        print(f"policy-trainer sft: {error}", file=sys.stderr)
        return 2
    lora = f", LoRA r={options.lora.r} merged" if options.lora.enabled else ""
    print(
        f"SFT: {result.examples} demonstrations, {result.steps} steps in {result.seconds:.0f} s "
        f"({result.trainable_parameters:,} trainable parameters{lora}); response loss on the "
        f"first {min(result.examples, options.loss_examples)}: {result.loss_before:.3f} -> "
        f"{result.loss_after:.3f}"
    )
    print(result.output_dir)
    return 0
