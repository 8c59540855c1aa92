"""`reward-service`: serve models over REST, or score texts in-process."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

from reward_service.client.errors import RewardClientError
from reward_service.engine.schemas import ScoreRequest, ScoreResponse
from reward_service.errors import MappingError, RewardServiceError, describe_validation_errors
from reward_service.export.onnx import add_export_parser, run_export
from reward_service.feedback import cli as feedback_cli
from reward_service.flags import add_settings_arguments, settings_overrides
from reward_service.model.inputs import format_inputs
from reward_service.model.loading import load_model
from reward_service.model.mapping import RewardMapping
from reward_service.serving.settings import (
    MAPPING_FIELDS,
    ServeSettings,
    normalization_from_flag,
    outputs_from_flags,
)
from reward_service.training import cli as training_cli
from reward_service.training.default_model import ensure_default_model

# Flags for every model a command loads, generated from ServeSettings' and RewardMapping's fields
# (those in settings.MAPPING_FIELDS); --output and --normalize have a syntax of their own.
MODEL_FIELDS = ("backend", "device", "dtype", "allow_pickle", "cache_dir")
SERVE_FIELDS = [
    name
    for name in ServeSettings.model_fields
    if name not in (*MODEL_FIELDS, "preset", "mapping_overrides")
]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, ServeSettings, "model", fields=MODEL_FIELDS)
    mapping = add_settings_arguments(
        parser,
        ServeSettings,
        "reward mapping: overrides the model folder's reward_config.json (for every model)",
        fields=("preset",),
    )
    mapping.add_argument(
        "--output",
        dest="outputs",
        action="append",
        metavar="LABEL[:WEIGHT]",
        help="A label name or index that makes up the reward; repeat to combine several.",
    )
    mapping.add_argument("--normalize", metavar="MEAN,STD", help="Then (reward - MEAN) / STD.")
    add_settings_arguments(parser, RewardMapping, "reward mapping fields", fields=MAPPING_FIELDS)


def _mapping_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.outputs:
        overrides["outputs"] = outputs_from_flags(args.outputs)
    if args.normalize:
        overrides["normalization"] = normalization_from_flag(args.normalize)
    return overrides


def serve_settings(args: argparse.Namespace) -> ServeSettings:
    """ServeSettings from the flags given; REWARD_SERVICE_* variables fill in the rest (a
    grouped option's flag beats its variable, the group's other options still read theirs)."""
    values = settings_overrides(
        args, ServeSettings, fields=(*SERVE_FIELDS, *MODEL_FIELDS, "preset"), partial=True
    )
    overrides = {
        **settings_overrides(args, RewardMapping, fields=MAPPING_FIELDS),
        **_mapping_overrides(args),
    }
    if overrides:
        values["mapping_overrides"] = overrides
    return ServeSettings(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reward-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Serve reward models over REST and gRPC.")
    add_settings_arguments(serve, ServeSettings, "serving", fields=SERVE_FIELDS)
    _add_model_options(serve)

    score = commands.add_parser(
        "score", help="Score texts in-process, or on running servers (--url), and print JSON."
    )
    score.add_argument("texts", nargs="*", help="Texts to score.")
    score.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="SOURCE",
        help="A model folder or hub id (default: the default model); with --url, "
        "a served model's name.",
    )
    score.add_argument(
        "--url",
        dest="urls",
        action="append",
        help="Score on this server through the client (http://HOST:PORT or "
        "grpc://HOST:PORT); repeat for replicas.",
    )
    score.add_argument("--api-key", help="With --url (default: $REWARD_SERVICE_API_KEY).")
    score.add_argument("--prompt", dest="prompts", action="append", help="With --completion.")
    score.add_argument("--completion", dest="completions", action="append")
    score.add_argument("--raw", action="store_true", help="Also print the raw logits.")
    _add_model_options(score)
    training_cli.add_commands(commands)
    add_export_parser(commands)
    feedback_cli.add_commands(commands)
    return parser


def _score_in_process(args: argparse.Namespace) -> dict:
    """Scores with the first model given (or the default) on the offline scoring path."""
    settings = serve_settings(args)
    request = ScoreRequest(
        texts=args.texts or None,
        prompts=args.prompts,
        completions=args.completions,
        return_raw=args.raw,
    )
    default_source = None if settings.models else str(ensure_default_model(settings.cache_dir))
    spec = settings.model_specs(default_source)[0]
    model = load_model(spec)
    inputs = format_inputs(
        model.mapping,
        texts=request.texts,
        prompts=request.prompts,
        completions=request.completions,
        render_chat=model.render_chat,
    )
    scored = model.score(inputs)
    response = ScoreResponse(
        model=spec.name,
        rewards=scored.rewards.tolist(),
        raw=scored.logits.tolist() if request.return_raw else None,
        truncated=scored.truncated,
    )
    return response.model_dump(exclude_none=True)


def _score_remote(args: argparse.Namespace) -> dict:
    from reward_service.client import RewardClient

    if args.raw or (args.models and len(args.models) > 1):
        raise ValueError("with --url, give at most one --model (a served name) and no --raw")
    api_key = args.api_key or os.environ.get("REWARD_SERVICE_API_KEY")
    model = args.models[0] if args.models else None
    with RewardClient(args.urls, api_key=api_key, model=model) as client:
        rewards = client.score(
            texts=args.texts or None, prompts=args.prompts, completions=args.completions
        )
    return {"rewards": rewards}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", None) and args.log_level.upper() or "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            settings = serve_settings(args)
            if settings.ray:
                from reward_service.serving import ray_serve

                return ray_serve.run(settings)
            from reward_service.serving.server import run

            return run(settings)
        if args.command == "score":
            result = _score_remote(args) if args.urls else _score_in_process(args)
            print(json.dumps(result))
            return 0
        if args.command in training_cli.COMMANDS:
            return training_cli.run(args)
        if args.command == "export":
            return run_export(args)
        if args.command == feedback_cli.COMMAND:
            return feedback_cli.run(args)
    except (RewardServiceError, MappingError, RewardClientError) as error:
        print(f"reward-service: error: {error}", file=sys.stderr)
        return 2
    except ValidationError as error:
        print(
            f"reward-service: error: {describe_validation_errors(error.errors())}", file=sys.stderr
        )
        return 2
    except ValueError as error:
        print(f"reward-service: error: {error}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
