"""`reward-service`: serve models over REST, or score texts in-process."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from pydantic import ValidationError

from reward_service.client.errors import RewardClientError
from reward_service.config import BatchingConfig, ServeSettings
from reward_service.errors import RewardServiceError
from reward_service.export import add_export_parser, run_export
from reward_service.mapping import MappingError
from reward_service.schemas import describe_validation_errors
from reward_service.training import cli as training_cli


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--backend", choices=["auto", "torch", "onnx"],
        help="Inference backend (auto: onnx where the folder holds model.onnx, else torch).",
    )  # fmt: skip
    group.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu).")
    group.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    group.add_argument(
        "--allow-pickle", action="store_true", default=None,
        help="Allow pickle (.bin) weights, which can run code when loaded. Off by default.",
    )  # fmt: skip
    mapping = parser.add_argument_group(
        "reward mapping", "Override the model folder's reward_config.json (for every model)."
    )
    mapping.add_argument("--preset", help="sentiment, toxicity, toxicity-any, hate, reward-model.")
    mapping.add_argument(
        "--output", dest="outputs", action="append", metavar="LABEL[:WEIGHT]",
        help="A label name or index that makes up the reward; repeat to combine several.",
    )  # fmt: skip
    mapping.add_argument("--activation", choices=["none", "softmax", "log_softmax", "sigmoid"])
    mapping.add_argument("--reduce", choices=["sum", "max", "min"])
    mapping.add_argument("--scale", type=float, help="reward = scale * value + shift.")
    mapping.add_argument("--shift", type=float)
    mapping.add_argument("--normalize", metavar="MEAN,STD", help="Then (reward - MEAN) / STD.")
    mapping.add_argument("--input-format", choices=["text", "pair", "template"])
    mapping.add_argument("--template", help="e.g. '{prompt}\\n{completion}'.")
    mapping.add_argument("--max-length", type=int)
    mapping.add_argument("--truncation-side", choices=["right", "left"])


def _mapping_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if args.outputs:
        outputs = []
        for entry in args.outputs:
            label, _, weight = entry.rpartition(":") if ":" in entry else (entry, "", "")
            outputs.append(
                {"label": label, "weight": float(weight)} if weight else {"label": entry}
            )
        overrides["outputs"] = outputs
    if args.normalize:
        mean, _, std = args.normalize.partition(",")
        overrides["normalization"] = {"mean": float(mean), "std": float(std)}
    for field in ("activation", "reduce", "scale", "shift", "input_format", "template",
                  "max_length", "truncation_side"):  # fmt: skip
        value = getattr(args, field)
        if value is not None:
            overrides[field] = value
    return overrides


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Only the flags actually given, so REWARD_SERVICE_* variables fill in the rest."""
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def _settings(args: argparse.Namespace) -> ServeSettings:
    values = _given(args, "host", "port", "grpc_port", "grpc_max_message_bytes", "backend",
                    "device", "dtype", "allow_pickle", "preset", "log_level",
                    "cache_dir", "api_key", "max_body_bytes", "shutdown_grace_s")  # fmt: skip
    if getattr(args, "access_log", None):
        values["access_log"] = True
    if args.models:
        values["models"] = args.models
    overrides = _mapping_overrides(args)
    if overrides:
        values["mapping_overrides"] = overrides
    batching = _given(args, *BatchingConfig.model_fields)
    if batching:
        values["batching"] = BatchingConfig(**batching)
    return ServeSettings(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reward-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="Serve reward models over REST and gRPC.")
    serve.add_argument(
        "--model", dest="models", action="append", metavar="[NAME=]SOURCE",
        help="A model folder or hub id, optionally named; repeat for several models. "
        "Without it, the project's default reward model.",
    )  # fmt: skip
    serve.add_argument("--host", help="Address to bind (default 127.0.0.1).")
    serve.add_argument("--port", type=int, help="REST port (default 8000; 0 picks a free one).")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 50051; 0 disables gRPC).")
    serve.add_argument(
        "--grpc-max-message-bytes", type=int,
        help="Largest gRPC request or response message (default 16 MiB).",
    )  # fmt: skip
    serve.add_argument(
        "--max-body-bytes", type=int,
        help="Largest REST request body (default 16 MiB); larger ones get 413 unread.",
    )  # fmt: skip
    serve.add_argument(
        "--api-key", help="Require this bearer token on REST and gRPC (not health, metrics); "
        "REWARD_SERVICE_API_KEY keeps it out of the process list.",
    )  # fmt: skip
    serve.add_argument(
        "--shutdown-grace-s", type=float,
        help="On SIGTERM: not ready, new requests refused (503 / UNAVAILABLE 'shutting down'), "
        "accepted ones answered, exit within this many seconds (default 25).",
    )  # fmt: skip
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="Log every request.")
    serve.add_argument("--cache-dir", help="Where built models are kept.")
    batching = serve.add_argument_group("batching")
    for name, field in BatchingConfig.model_fields.items():
        kind = float if field.annotation in (float, "float") else int
        batching.add_argument(f"--{name.replace('_', '-')}", type=kind, help=field.description)
    _add_model_options(serve)

    score = commands.add_parser(
        "score", help="Score texts in-process, or on running servers (--url), and print JSON."
    )
    score.add_argument("texts", nargs="*", help="Texts to score.")
    score.add_argument("--model", dest="models", action="append", metavar="SOURCE",
                       help="A model folder or hub id (default: the default model); with --url, "
                       "a served model's name.")  # fmt: skip
    score.add_argument("--url", dest="urls", action="append",
                       help="Score on this server through the client (http://HOST:PORT or "
                       "grpc://HOST:PORT); repeat for replicas.")  # fmt: skip
    score.add_argument("--api-key", help="With --url (default: $REWARD_SERVICE_API_KEY).")
    score.add_argument("--prompt", dest="prompts", action="append", help="With --completion.")
    score.add_argument("--completion", dest="completions", action="append")
    score.add_argument("--raw", action="store_true", help="Also print the raw logits.")
    score.add_argument("--cache-dir", help="Where built models are kept.")
    _add_model_options(score)
    training_cli.add_commands(commands)
    add_export_parser(commands)
    return parser


async def _score_in_process(args: argparse.Namespace) -> dict:
    from reward_service.schemas import ScoreRequest
    from reward_service.server import build_engine

    settings = _settings(args)
    request = ScoreRequest(
        texts=args.texts or None, prompts=args.prompts, completions=args.completions,
        return_raw=args.raw,
    )  # fmt: skip
    engine = build_engine(settings)
    await engine.start()
    try:
        response = await engine.score(request)
    finally:
        await engine.stop()
    return response.model_dump(exclude_none=True)


def _score_remote(args: argparse.Namespace) -> dict:
    from reward_service.client import RewardClient

    if args.raw or (args.models and len(args.models) > 1):
        raise ValueError("with --url, give at most one --model (a served name) and no --raw")
    api_key = args.api_key or os.environ.get("REWARD_SERVICE_API_KEY")
    model = args.models[0] if args.models else None
    with RewardClient(args.urls, api_key=api_key, model=model) as client:
        rewards = client.score(texts=args.texts or None, prompts=args.prompts,
                               completions=args.completions)  # fmt: skip
    return {"rewards": rewards}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", None) and args.log_level.upper() or "INFO",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            from reward_service.server import run

            return run(_settings(args))
        if args.command == "score":
            result = _score_remote(args) if args.urls else asyncio.run(_score_in_process(args))
            print(json.dumps(result))
            return 0
        if args.command in training_cli.COMMANDS:
            return training_cli.run(args)
        if args.command == "export":
            return run_export(args)
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
