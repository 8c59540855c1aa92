"""The `train`, `evaluate` and `vader-data` subcommands of `reward-service`; their flags come from
the settings in ``training.config``."""

from __future__ import annotations

import argparse
from pathlib import Path

from reward_service.flags import add_settings_arguments, settings_from_args, settings_overrides
from reward_service.training.config import (
    VADER_MODEL_FIELDS,
    EvaluateSettings,
    TrainConfig,
    TrainFiles,
    VaderDataSettings,
    VaderModelSettings,
)
from reward_service.training.evaluate import evaluate_file, format_table
from reward_service.training.train import train
from reward_service.training.vader import write_vader_data

COMMANDS = ("train", "evaluate", "vader-data", "vader-model")


def add_commands(commands: argparse._SubParsersAction) -> None:
    train_command = commands.add_parser(
        "train", help="Train a reward model from rankings, pairs, labels or scores (JSONL)."
    )
    add_settings_arguments(train_command, TrainFiles)
    add_settings_arguments(train_command, TrainConfig)
    evaluate = commands.add_parser(
        "evaluate", help="Pairwise accuracy, Pearson and Spearman on held-out data, with baselines."
    )
    add_settings_arguments(evaluate, EvaluateSettings)
    data = commands.add_parser(
        "vader-data", help="Write the default model's data: the VADER movie snippets, split."
    )
    add_settings_arguments(data, VaderDataSettings)
    vader_model = commands.add_parser(
        "vader-model",
        help="Build the default model's recipe on any base (e.g. --base mpnet): train, then "
        "evaluate on the held-out test split.",
    )
    add_settings_arguments(vader_model, VaderModelSettings)
    add_settings_arguments(
        vader_model,
        TrainConfig,
        "changes to the default recipe (its values in reward_service.training.recipe)",
        fields=VADER_MODEL_FIELDS,
    )


def run(args: argparse.Namespace) -> int:
    if args.command == "train":
        return _train(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "vader-model":
        return _vader_model(args)
    return _vader_data(args)


def _train(args: argparse.Namespace) -> int:
    files = settings_from_args(args, TrainFiles)
    config = settings_from_args(args, TrainConfig)
    result = train(files.data, files.out, config, eval_file=files.eval_data)
    best = result.best
    print(
        f"wrote {files.out} in {result.seconds / 60:.1f} min: {result.objective}, best epoch "
        f"{result.best_epoch}, held-out pairwise accuracy {best.pairwise_accuracy:.3f}"
        + (f", Pearson r {best.pearson:.3f}" if best.pearson is not None else "")
    )
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, EvaluateSettings)
    models = {}
    for entry in settings.models:
        name, _, folder = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        models[name] = Path(folder)
    for number, data in enumerate(settings.data):
        rows, held_out = evaluate_file(
            models,
            data,
            min_score_gap=settings.min_score_gap,
            baselines=settings.baselines,
            device=settings.device,
        )
        heading = f"## {data}\n\n" if len(settings.data) > 1 else ""
        print(
            ("\n" if number else "")
            + heading
            + format_table(rows, held_out, settings.min_score_gap)
        )
    return 0


def _vader_data(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, VaderDataSettings)
    files = write_vader_data(settings.out, ranking_size=settings.ranking_size, seed=settings.seed)
    for name, path in files.items():
        print(f"{name:<22} {path}")
    return 0


def _vader_model(args: argparse.Namespace) -> int:
    from reward_service.training.recipe import DEFAULT_CONFIG, Distillation, build_vader_model

    settings = settings_from_args(args, VaderModelSettings)
    changes = settings_overrides(args, TrainConfig, fields=VADER_MODEL_FIELDS)
    config = TrainConfig(**{**DEFAULT_CONFIG.model_dump(), **changes})
    distillation = None
    if settings.teacher is not None or settings.teacher_rewards is not None:
        distillation = Distillation(
            settings.unlabelled,
            settings.teacher_weight,
            variants=settings.variants,
            teacher=settings.teacher,
            teacher_rewards=settings.teacher_rewards,
            save_rewards=settings.save_teacher_rewards,
            seed=config.seed,
        )
    build = build_vader_model(settings.out, config, distillation=distillation)
    print(build.table)
    teacher = (
        f" (and {build.teacher_seconds / 60:.1f} min for the teacher's scores)"
        if distillation is not None
        else ""
    )
    print(
        f"wrote {settings.out}: trained in {build.result.seconds / 60:.1f} min on this "
        f"machine{teacher}"
    )
    return 0
