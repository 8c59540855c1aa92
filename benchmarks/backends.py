"""Backends compared on one model: texts/s for torch fp32 and bf16, onnx fp32 and int8, agreement.

    flock /tmp/rlhf-cpu.lock .venv/bin/python benchmarks/backends.py [--profile]

Exports the model (the project's default reward model unless --model) to fp32 and int8 ONNX
folders, loads them, and torch with float32 and with bf16 weights (`--dtype bfloat16`), the way
the server does, and times backend.forward on the same padded batches of seeded 20-60-word
texts. The backends take turns within each round, so a neighbour's
load slows all alike; ratios are per round, and every figure is a median over rounds.
Agreement is over all texts: max |reward - torch reward| and Spearman rank correlation.
With --profile it also prints where torch and onnx fp32 spend batch 32's time, by op.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from reward_service.cache import default_cache_dir  # noqa: E402
from reward_service.export.onnx import export_model, sample_texts  # noqa: E402
from reward_service.model.loading import LoadedModel, load_model  # noqa: E402
from reward_service.model.spec import ModelSpec  # noqa: E402
from reward_service.training.default_model import ensure_default_model  # noqa: E402

BATCH_SIZES = (1, 8, 32)


def load(name: str, folder: Path, backend: str, dtype: str = "float32") -> LoadedModel:
    return load_model(ModelSpec(name=name, source=str(folder), backend=backend, dtype=dtype))


def padded_batches(model: LoadedModel, texts: list[str], size: int) -> list[dict]:
    """`texts` in consecutive batches of `size`, tokenised and padded as the server does."""
    encoder = model.encoder
    return [
        encoder.pad(encoder.encode(texts[start : start + size]))
        for start in range(0, len(texts), size)
    ]


def agreement(models: dict[str, LoadedModel], texts: list[str]) -> dict[str, tuple[float, float]]:
    """Per backend: max |reward - torch reward| and the Spearman correlation with torch's."""
    import numpy as np
    from scipy.stats import spearmanr

    rewards = {name: model.score(texts, batch_size=32).rewards for name, model in models.items()}
    reference = rewards["torch"]
    return {
        name: (
            float(np.abs(values - reference).max()),
            float(spearmanr(reference, values).statistic),
        )
        for name, values in rewards.items()
    }


def throughput(
    models: dict[str, LoadedModel], texts: list[str], batch_size: int, rounds: int, min_items: int
) -> dict[str, list[float]]:
    """Texts/s per round for each backend, on identical pre-padded batches."""
    count = max(min_items, batch_size)
    batches = padded_batches(next(iter(models.values())), texts[:count], batch_size)
    for model in models.values():  # warm up: first runs allocate and pick kernels
        model.backend.forward(batches[0])
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for features in batches:
                model.backend.forward(features)
            rates[name].append(count / (time.perf_counter() - started))
    return rates


def profile(
    models: dict[str, LoadedModel], onnx_file: Path, texts: list[str], size: int
) -> list[str]:
    """Where the time goes at one batch size: torch's self time by aten op, and ONNX Runtime's
    kernel time by op type (its own profiler, on a session with the backend's settings)."""
    import collections
    import json

    import onnxruntime as ort
    import torch

    from reward_service.model.backends.onnx import session_options

    batches = padded_batches(models["torch"], texts[: 4 * size], size)
    lines = [f"where the time goes at batch {size} (share of each backend's own op time):"]

    backend = models["torch"].backend
    backend.forward(batches[0])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
        for features in batches:
            backend.forward(features)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    top = sorted(events, key=lambda event: event.self_cpu_time_total, reverse=True)[:8]
    lines.append(
        "  torch:     "
        + ", ".join(f"{event.key} {event.self_cpu_time_total / total:.0%}" for event in top)
    )

    options = session_options()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        names = [graph_input.name for graph_input in session.get_inputs()]
        for features in [batches[0], *batches]:
            session.run(None, {name: features[name] for name in names})
        trace = json.loads(Path(session.end_profiling()).read_text())
    kernel_time: collections.Counter[str] = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernel_time[event["args"]["op_name"]] += event["dur"]
    total = sum(kernel_time.values())
    lines.append(
        "  onnx fp32: "
        + ", ".join(f"{op} {time_us / total:.0%}" for op, time_us in kernel_time.most_common(8))
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Model folder (default: the project's default model).")
    parser.add_argument("--rounds", type=int, default=9, help="Timed rounds per batch size.")
    parser.add_argument("--items", type=int, default=64, help="Texts per backend per round.")
    parser.add_argument("--texts", type=int, default=512, help="Texts for the agreement figures.")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="Also print where torch and onnx fp32 spend their time.",
    )
    args = parser.parse_args()

    source = Path(args.model) if args.model else ensure_default_model(default_cache_dir())
    texts = sample_texts(max(args.texts, args.items), min_words=20, max_words=60, seed=0)
    with tempfile.TemporaryDirectory(prefix="backends-bench-") as work:
        exported = {}
        for quantize in (None, "int8"):
            out = Path(work) / (quantize or "fp32")
            metadata = export_model(str(source), out, quantize=quantize)
            exported[quantize or "fp32"] = (out, metadata)
        models = {
            "torch": load("torch", source, "torch"),
            "torch bf16": load("torch-bf16", source, "torch", dtype="bfloat16"),
            "onnx fp32": load("onnx-fp32", exported["fp32"][0], "onnx"),
            "onnx int8": load("onnx-int8", exported["int8"][0], "onnx"),
        }
        agree = agreement(models, texts[: args.texts])
        rates = {
            size: throughput(models, texts, size, args.rounds, args.items) for size in BATCH_SIZES
        }
        profile_lines = (
            profile(models, exported["fp32"][0] / "model.onnx", texts, BATCH_SIZES[-1])
            if args.profile
            else []
        )

    torch_model = models["torch"]
    print(f"model: {source}")
    recipe = exported["int8"][1]["int8_recipe"]
    print(
        f"  max_length {torch_model.encoder.max_length}; {len(texts)} seeded texts of 20-60 "
        f"words; {args.rounds} rounds x {args.items} texts per backend, medians; int8: "
        f"{recipe['op_types']} per_channel={recipe['per_channel']}, fp32 kept: "
        f"{recipe['fp32_nodes']}"
    )
    header = "".join(f"{f'batch {size} texts/s (x torch)':>28}" for size in BATCH_SIZES)
    print(f"{'backend':<12}{header}{'max |Δ| reward':>16}{'Spearman':>10}")
    for name in models:
        cells = []
        for size in BATCH_SIZES:
            per_round = rates[size][name]
            ratios = [
                rate / base for rate, base in zip(per_round, rates[size]["torch"], strict=True)
            ]
            cells.append(f"{statistics.median(per_round):9.1f} (x{statistics.median(ratios):.2f})")
        max_diff, rank = agree[name]
        print(f"{name:<12}{''.join(f'{cell:>28}' for cell in cells)}{max_diff:>16.2e}{rank:>10.4f}")
    for line in profile_lines:
        print(line)


if __name__ == "__main__":
    main()
