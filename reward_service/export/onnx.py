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
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from reward_service.cache import staged_folder
from reward_service.errors import ExportError, first_line
from reward_service.flags import Flag, add_settings_arguments, settings_from_args
from reward_service.model.backends.onnx import EXPORT_METADATA_FILENAME, ONNX_FILENAME
from reward_service.model.loading import ScoredInputs, load_model
from reward_service.model.mapping import REWARD_CONFIG_FILENAME
from reward_service.model.spec import ModelSpec

DEFAULT_OPSET = 17
# An fp32 graph whose logits differ from PyTorch's by more than this is a broken export.
FP32_TOLERANCE = 1e-4
PARITY_TEXT_COUNT = 32


class ExportSettings(BaseModel):
    """`reward-service export`: which folder, where to, and how."""

    model_config = ConfigDict(extra="forbid", title="export settings")

    model: Annotated[str, Flag(metavar="SOURCE")] = Field(description="Model folder or hub id.")
    out: Path = Field(description="The folder to write (new/empty).")
    quantize: Literal["int8"] | None = Field(None, description="Dynamic int8 weights (MatMuls).")
    opset: int = Field(DEFAULT_OPSET, description="ONNX opset version.")
    allow_pickle: bool = Field(
        False,
        description="Allow pickle (.bin) weights, which can run code when loaded. Off by default.",
    )


class Int8Recipe(BaseModel):
    """Dynamic int8 (onnxruntime's ``quantize_dynamic``): weights quantised once, activations
    per batch. Embeddings (Gather) and the pooler and classifier head (Gemm) stay fp32."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_type: Literal["QInt8", "QUInt8"] = Field("QInt8", description="Signed int8 weights.")
    per_channel: bool = Field(True, description="A scale per output channel, not per tensor.")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI.")
    op_types: tuple[str, ...] = Field(("MatMul",), description="The op types quantised.")
    fp32_down_projections: int = Field(
        1,
        ge=0,
        description="The first N feed-forward down-projections stay fp32. Their input is the "
        "GELU output, whose outliers a per-batch uint8 activation scale crushes, and the first "
        "layer's errors pass through all the others.",
    )


# Chosen on the default reward model; its model card lists what else was tried, and how close.
INT8_RECIPE = Int8Recipe()

WORDS = (
    "the a an this that model answer question reward policy helpful harmless honest clear "
    "vague wrong right good bad excellent terrible useful useless kind rude fast slow user "
    "assistant explains refuses writes code story summary detail step because however and "
    "but so very quite not never always often response prompt careful careless safe risky"
).split()


def sample_texts(count: int, *, min_words: int, max_words: int, seed: int) -> list[str]:
    """Seeded texts of mixed lengths: the same list on every machine and every run."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) + "."
        for _ in range(count)
    ]


def export_model(
    source: str,
    out: Path,
    *,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Writes the ONNX folder `out`; returns its metadata (also written to onnx_export.json)."""
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
    reference = model.score(texts, batch_size=PARITY_TEXT_COUNT)

    # Written beside `out` and renamed, so an interrupted export never looks complete.
    with staged_folder(out) as staging:
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

        # The staged folder loaded as a model and the same texts scored. With the source's
        # mapping: the check is on the graph, and a preset detected from a hub id would not
        # carry over to the folder's name.
        staged = load_model(
            ModelSpec(
                name="exported",
                source=str(staging),
                backend="onnx",
                mapping_overrides=model.mapping.model_dump(),
            )
        )
        parity = _parity(reference, staged.score(texts, batch_size=PARITY_TEXT_COUNT))
        if quantize is None and parity["max_abs_logit_diff"] > FP32_TOLERANCE:
            raise ExportError(
                f"the exported graph's logits differ from PyTorch's by up to "
                f"{parity['max_abs_logit_diff']:.2e} (tolerance {FP32_TOLERANCE:g}): not written"
            )
        metadata = _metadata(model.folder, opset, quantize, recipe, parity)
        (staging / EXPORT_METADATA_FILENAME).write_text(json.dumps(metadata, indent=2) + "\n")
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

    # TorchScript with eager attention (plain MatMul/Softmax): the fastest graph under ORT's own
    # optimisation, measured against the alternatives on the default model (see its model card).
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
            raise ExportError(
                f"torch.onnx.export failed at opset {opset}: {first_line(error)}"
            ) from None


def quantize_int8(graph: Path, out: Path, recipe: Int8Recipe) -> dict[str, Any]:
    """Dynamic int8 per `recipe`; returns it, with the nodes kept in fp32, for the metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    kept = down_projections(onnx.load(graph))[: recipe.fp32_down_projections]
    logging.disable(logging.WARNING)  # its advice to pre-process is for static quantisation
    try:
        quantize_dynamic(
            graph,
            out,
            weight_type=QuantType[recipe.weight_type],
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            op_types_to_quantize=list(recipe.op_types),
            nodes_to_exclude=kept,
        )
    finally:
        logging.disable(logging.NOTSET)
    return {**recipe.model_dump(mode="json"), "fp32_nodes": kept}


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


def _parity(reference: ScoredInputs, exported: ScoredInputs) -> dict[str, Any]:
    from scipy.stats import spearmanr

    return {
        "texts": len(reference.rewards),
        "max_abs_logit_diff": float(np.abs(reference.logits - exported.logits).max()),
        "max_abs_reward_diff": float(np.abs(reference.rewards - exported.rewards).max()),
        "reward_spearman": float(spearmanr(reference.rewards, exported.rewards).statistic),
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
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
    add_settings_arguments(export, ExportSettings)


def run_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, ExportSettings)
    metadata = export_model(
        settings.model,
        settings.out,
        quantize=settings.quantize,
        opset=settings.opset,
        allow_pickle=settings.allow_pickle,
    )
    print(json.dumps({"out": str(settings.out), **metadata}, indent=2))
    return 0
