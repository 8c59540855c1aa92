"""`policy-trainer sft`: supervised fine-tuning on demonstrations (see policy_trainer.sft).

Writes a plain Hugging Face folder (LoRA adapters merged in) that `policy-trainer ppo` takes as
its policy, with ``sft_summary.json`` recording the options and the loss before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from policy_trainer.lora import add_lora_arguments, lora_options_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from policy_trainer.sft import SFTOptions

    defaults = SFTOptions()
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
    parser.add_argument("--epochs", type=float, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--max-length",
        type=int,
        default=defaults.max_length,
        help="tokens per example, prompt included; longer examples are cut at the end",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    add_lora_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from policy_trainer.models import PolicyLoadError
    from policy_trainer.sft import SFTDataError, SFTOptions, train_sft
    from reward_service.schemas import describe_validation_errors

    try:
        options = SFTOptions(
            epochs=args.epochs,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            lora=lora_options_from_args(args),
        )
    except ValidationError as error:
        problems = describe_validation_errors(error.errors())
        print(f"policy-trainer sft: invalid options: {problems}", file=sys.stderr)
        return 2
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
