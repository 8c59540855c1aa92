"""The server's bounded tokenisation against the tokenizer truncating by itself, side by side.

    .venv/bin/python benchmarks/tokenize_long_texts.py

MiniLM's WordPiece tokenizer (the default reward model's), max_length 512. For each workload it
times `TextEncoder.encode` (texts cut to a character budget, truncation on token lists) and the
way the server tokenised before: the Rust tokenizer with its own truncation, the overflow read
to tell truncated items. Both take turns within each round; every figure is a median over
rounds, and each ratio is per round. Peak memory is measured in a fresh interpreter per call
(one call of one workload): its resident high-water mark over the call (VmHWM, reset before it),
so it includes the tokenizer's own allocations.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Tokenizer  # noqa: E402

from reward_service.model.tokenization import TextEncoder  # noqa: E402
from reward_service.training.base_encoder import minilm_folder  # noqa: E402

MAX_LENGTH = 512
ROUNDS = 5
PROSE = "the film was a delight, funny and warm, with a plot that never drags. "
WORKLOADS = {
    "64 reviews of ~220 characters": [PROSE * 3] * 64,
    "64 pairs (80 + 220 characters)": [(PROSE[:80], PROSE * 3)] * 64,
    "32 texts of 32,768 '!'": ["!" * 32768] * 32,
    "32 texts of 32,768 characters of prose": [(PROSE * 500)[:32768]] * 32,
    "4 pairs of 4,096 '!' each side": [("!" * 4096, "!" * 4096)] * 4,
}


def tokenizer_truncating(tokenizer: Tokenizer):
    truncating = Tokenizer.from_str(tokenizer.to_str())
    truncating.no_padding()
    truncating.enable_truncation(MAX_LENGTH, strategy="longest_first", direction="right")

    def encode(inputs):
        return [
            (encoding.ids, bool(encoding.overflowing))
            for encoding in truncating.encode_batch(inputs, add_special_tokens=True)
        ]

    return encode


def encoders() -> dict:
    tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    bounded = TextEncoder(
        tokenizer,
        max_length=MAX_LENGTH,
        truncation_side="right",
        pad_token_id=0,
        input_names=["input_ids"],
    ).encode
    return {"bounded": bounded, "whole": tokenizer_truncating(tokenizer)}


def peak_mib(label: str, workload: str) -> float:
    """Run in a fresh interpreter (spawned): the growth of one call's resident memory."""
    call, inputs = encoders()[label], WORKLOADS[workload]
    status = Path("/proc/self/status")
    Path("/proc/self/clear_refs").write_text("5")
    before = _kib(status.read_text(), "VmRSS:")
    call(inputs)
    return (_kib(status.read_text(), "VmHWM:") - before) / 1024


def _kib(status: str, field: str) -> int:
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field)))


def main() -> None:
    calls = encoders()
    bounded, whole = calls["bounded"], calls["whole"]
    fresh = multiprocessing.get_context("spawn")
    print(
        f"{'workload':42} {'bounded ms':>11} {'whole ms':>9} {'whole/bounded':>14} "
        f"{'bounded MiB':>12} {'whole MiB':>10}"
    )
    for name, inputs in WORKLOADS.items():
        times: dict[str, list[float]] = {"bounded": [], "whole": []}
        ratios = []
        for _ in range(ROUNDS):
            for label, call in (("bounded", bounded), ("whole", whole)):
                started = time.perf_counter()
                call(inputs)
                times[label].append(time.perf_counter() - started)
            ratios.append(times["whole"][-1] / times["bounded"][-1])
        # maxtasksperchild=1: each measurement in a fresh interpreter, no allocator reuse.
        with fresh.Pool(1, maxtasksperchild=1) as pool:
            memory = {label: pool.apply(peak_mib, (label, name)) for label in ("bounded", "whole")}
        print(
            f"{name:42} {statistics.median(times['bounded']) * 1e3:11.1f} "
            f"{statistics.median(times['whole']) * 1e3:9.1f} {statistics.median(ratios):14.2f} "
            f"{memory['bounded']:12.1f} {memory['whole']:10.1f}"
        )


if __name__ == "__main__":
    main()
