"""`reward-service export`: a model folder to an ONNX folder the onnx backend serves.

The folder written holds model.onnx (dynamic batch and sequence axes), the tokenizer, config.json,
reward_config.json, and onnx_export.json: where it came from, how it was made, and how closely its
rewards matched PyTorch's on a fixed set of texts at export time.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from reward_service.backends.onnx_backend import (
    EXPORT_METADATA_FILENAME,
    ONNX_FILENAME,
    OnnxBackend,
)
from reward_service.errors import RewardServiceError
from reward_service.mapping import REWARD_CONFIG_FILENAME

DEFAULT_OPSET = 17
# An fp32 graph whose logits differ from PyTorch's by more than this is a broken export.
FP32_TOLERANCE = 1e-4
PARITY_TEXT_COUNT = 32

# Dynamic int8: weights quantised once, activations per batch. Tried on the trained MiniLM-L6
# default (Spearman of rewards against torch's, 512 texts): everything, per tensor (a plain
# quantize_dynamic) 0.960; MatMuls only, per tensor 0.958; per output channel 0.990; and keeping
# the first layer's feed-forward down-projection in fp32 0.992 (all six: 0.995, but 25% slower).
# So: the encoder's MatMuls per channel, but that one. Its input is the GELU output, whose
# outliers a per-batch uint8 activation scale crushes, and the first layer's errors pass through
# all the others. Embeddings (Gather) and the pooler and classifier head (Gemm) stay fp32 too.
INT8_RECIPE: dict[str, Any] = {
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "op_types": ["MatMul"],
    "fp32_down_projections": 1,  # the first N feed-forward down-projections stay fp32
}

WORDS = (
    "the a an this that model answer question reward policy helpful harmless honest clear "
    "vague wrong right good bad excellent terrible useful useless kind rude fast slow user "
    "assistant explains refuses writes code story summary detail step because however and "
    "but so very quite not never always often response prompt careful careless safe risky"
).split()


class ExportError(RewardServiceError):
    """The model could not be exported, or the export does not reproduce its rewards."""


def sample_texts(count: int, *, min_words: int, max_words: int, seed: int) -> list[str]:
    """Seeded texts of mixed lengths: the same list on every machine and every run."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "."
        for _ in range(count)
    ]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two score vectors (ties, rare for float rewards, ranked by order)."""
    ranks_a = np.argsort(np.argsort(a)).astype(np.float64)
    ranks_b = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def export_model(
    source: str,
    out: Path,
    *,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Writes the ONNX folder `out`; returns its metadata (also written to onnx_export.json)."""
    from reward_service.config import ModelSpec
    from reward_service.loading import load_model

    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantisation {quantize!r}; int8 is the one offered")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not an empty folder")
    model = load_model(
        ModelSpec(name="export", source=source, backend="torch", allow_pickle=allow_pickle)
    )
    encoder = model.encoder
    texts = sample_texts(PARITY_TEXT_COUNT, min_words=1, max_words=200, seed=0)
    features = encoder.pad(encoder.encode(texts))
    reference_logits = model.backend.forward(features)

    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside `out` and renamed, so an interrupted export never looks complete.
    staging = Path(tempfile.mkdtemp(prefix=".exporting-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the folder from a server run as another user
    try:
        work = staging / "work"
        work.mkdir()
        exported = work / "exported.onnx"
        trace_inputs = encoder.pad(encoder.encode(["a short text", "a somewhat longer text here"]))
        _torch_to_onnx(model.backend.model, trace_inputs, encoder.input_names, exported, opset)
        recipe = None
        if quantize == "int8":
            recipe = quantize_int8(exported, staging / ONNX_FILENAME, INT8_RECIPE)
        else:
            exported.rename(staging / ONNX_FILENAME)
        shutil.rmtree(work)
        _copy_model_files(model.folder, staging)

        backend = OnnxBackend.load(
            staging, device="cpu", dtype="float32", input_names=encoder.input_names,
            num_labels=len(model.id2label),
        )  # fmt: skip
        logits = backend.forward(features)
        parity = _parity(reference_logits, logits, model.resolved.map_logits, len(texts))
        if quantize is None and parity["max_abs_logit_diff"] > FP32_TOLERANCE:
            raise ExportError(
                f"the exported graph's logits differ from PyTorch's by up to "
                f"{parity['max_abs_logit_diff']:.2e} (tolerance {FP32_TOLERANCE:g}): not written"
            )
        metadata = _metadata(model.folder, opset, quantize, recipe, parity)
        (staging / EXPORT_METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def _torch_to_onnx(
    model, trace_inputs: dict[str, np.ndarray], input_names: tuple[str, ...], path: Path, opset: int
) -> None:
    import torch

    class LogitsOnly(torch.nn.Module):
        """Positional token-id inputs in the tokenizer's order; the logits as the one output."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(input_names, inputs, strict=True))).logits

    # Measured on MiniLM-L6 with ORT's full graph optimisation, 2 cores: the TorchScript exporter
    # with eager attention (plain MatMul/Softmax) runs fastest. The dynamo exporter's graph is as
    # exact but ~25% slower; SDPA attention ~10% slower; and onnxruntime.transformers' fused
    # Attention kernel slower still at every batch size here.
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow
        try:
            torch.onnx.export(
                LogitsOnly().eval(),
                tuple(torch.from_numpy(trace_inputs[name]) for name in input_names),
                str(path),
                input_names=list(input_names),
                output_names=["logits"],
                dynamic_axes={**axes, "logits": {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        except Exception as error:  # the exporter raises many types, all meaning "cannot export"
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise ExportError(f"torch.onnx.export failed at opset {opset}: {first_line}") from None


def quantize_int8(graph: Path, out: Path, recipe: dict[str, Any]) -> dict[str, Any]:
    """Dynamic int8 per `recipe` (see INT8_RECIPE); returns it with the nodes kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = down_projections(onnx.load(graph))[: recipe["fp32_down_projections"]]
    logging.disable(logging.WARNING)  # its advice to pre-process is for static quantisation
    try:
        quantize_dynamic(
            graph,
            out,
            weight_type=QuantType[recipe["weight_type"]],
            per_channel=recipe["per_channel"],
            reduce_range=recipe["reduce_range"],
            op_types_to_quantize=recipe["op_types"],
            nodes_to_exclude=kept,
        )
    finally:
        logging.disable(logging.NOTSET)
    return {**recipe, "fp32_nodes": kept}


def down_projections(model) -> list[str]:
    """The feed-forward down-projections, in graph order: MatMuls by a constant weight that
    narrows (intermediate_size -> hidden_size), whichever encoder family exported them."""
    shapes = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
    names = []
    for node in model.graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "MatMul" else None
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            names.append(node.name)
    return names


def _copy_model_files(source: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    for name in ("config.json", REWARD_CONFIG_FILENAME):
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)


def _parity(reference: np.ndarray, logits: np.ndarray, map_logits, count: int) -> dict[str, Any]:
    reference_rewards, rewards = map_logits(reference), map_logits(logits)
    return {
        "texts": count,
        "max_abs_logit_diff": float(np.abs(reference - logits).max()),
        "max_abs_reward_diff": float(np.abs(reference_rewards - rewards).max()),
        "reward_spearman": spearman(reference_rewards, rewards),
    }


def _metadata(
    folder: Path,
    opset: int,
    quantize: str | None,
    recipe: dict[str, Any] | None,
    parity: dict[str, Any],
) -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    return {
        "source": str(folder.resolve()),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "opset": opset,
        "quantization": quantize,
        "int8_recipe": recipe,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "parity_with_torch": parity,
    }


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="Export a model folder to ONNX for the onnx backend."
    )
    export.add_argument("--model", required=True, metavar="SOURCE", help="Model folder or hub id.")
    export.add_argument("--out", required=True, type=Path, help="The folder to write (new/empty).")
    export.add_argument("--quantize", choices=["int8"], help="Dynamic int8 weights (MatMuls).")
    export.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version.")
    export.add_argument(
        "--allow-pickle", action="store_true",
        help="Allow pickle (.bin) weights, which can run code when loaded. Off by default.",
    )  # fmt: skip


def run_export(args: argparse.Namespace) -> int:
    metadata = export_model(
        args.model, args.out, quantize=args.quantize, opset=args.opset,
        allow_pickle=args.allow_pickle,
    )  # fmt: skip
    print(json.dumps({"out": str(args.out), **metadata}, indent=2))
    return 0
