"""The precision gate: a faster precision is served only where it keeps the model's ranking.

On a held-out set with human judgements, the model is scored in float32 and in each candidate
precision. A candidate passes when its rewards' Spearman correlation with float32's is at least
``MIN_SPEARMAN`` and its pairwise accuracy against the humans is within ``MAX_ACCURACY_LOSS``
of float32's; the first that passes (fastest first) is written as the folder's choice in
``precision_gate.json``, which ``--dtype auto`` serves. A candidate that fails is recorded with
the reason, and float32 is chosen if none passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from reward_service.model.precision import PRECISION_GATE_FILENAME
from reward_service.training.evaluate import HeldOutSet, pairwise_accuracy, score_folder

MIN_SPEARMAN = 0.995
MAX_ACCURACY_LOSS = 0.005
# Fastest first. float16 is left out: CPUs compute it slower than float32.
CANDIDATES = ("bfloat16",)


class Verdict(BaseModel):
    """One candidate precision against float32 on the held-out set."""

    dtype: str
    spearman_vs_float32: float
    pairwise_accuracy: float
    float32_pairwise_accuracy: float
    max_abs_reward_diff: float
    passed: bool
    reason: str


def judge(dtype: str, float32: np.ndarray, candidate: np.ndarray, held_out: HeldOutSet) -> Verdict:
    """Whether `candidate` (the rewards in `dtype`) keeps the ranking of `float32`'s."""
    from scipy.stats import spearmanr

    rank = float(spearmanr(float32, candidate).statistic)
    reference = pairwise_accuracy(float32, held_out.better, held_out.worse)
    accuracy = pairwise_accuracy(candidate, held_out.better, held_out.worse)
    problems = []
    if not rank >= MIN_SPEARMAN:  # a NaN correlation fails too
        problems.append(f"Spearman with float32 {rank:.4f} < {MIN_SPEARMAN}")
    if not accuracy >= reference - MAX_ACCURACY_LOSS:
        problems.append(
            f"pairwise accuracy {accuracy:.4f} is more than {MAX_ACCURACY_LOSS} below "
            f"float32's {reference:.4f}"
        )
    return Verdict(
        dtype=dtype,
        spearman_vs_float32=rank,
        pairwise_accuracy=accuracy,
        float32_pairwise_accuracy=reference,
        max_abs_reward_diff=float(np.abs(candidate - float32).max()),
        passed=not problems,
        reason="; ".join(problems) or "keeps the ranking",
    )


def run_gate(
    folder: Path, held_out: HeldOutSet, *, held_out_name: str, candidates=CANDIDATES
) -> dict:
    """Scores `held_out` in float32 and each candidate, writes the folder's
    precision_gate.json and returns what it holds."""
    float32 = score_folder(folder, held_out.inputs, dtype="float32")
    verdicts = [
        judge(dtype, float32, score_folder(folder, held_out.inputs, dtype=dtype), held_out)
        for dtype in candidates
    ]
    chosen = next((verdict.dtype for verdict in verdicts if verdict.passed), "float32")
    gate = {
        "chosen": chosen,
        "held_out": held_out_name,
        "items": len(held_out.inputs),
        "pairs": len(held_out.better),
        "thresholds": {"min_spearman": MIN_SPEARMAN, "max_accuracy_loss": MAX_ACCURACY_LOSS},
        "candidates": [verdict.model_dump() for verdict in verdicts],
    }
    (folder / PRECISION_GATE_FILENAME).write_text(json.dumps(gate, indent=2) + "\n")
    return gate


def describe_gate(gate: dict) -> str:
    """One line for logs: what was chosen, and each candidate's figures."""
    parts = [
        f"{verdict['dtype']} {'passed' if verdict['passed'] else 'refused'} (Spearman with "
        f"float32 {verdict['spearman_vs_float32']:.4f}, pairwise accuracy "
        f"{verdict['pairwise_accuracy']:.4f} vs {verdict['float32_pairwise_accuracy']:.4f}"
        + ("" if verdict["passed"] else f": {verdict['reason']}")
        + ")"
        for verdict in gate["candidates"]
    ]
    return f"precision gate on {gate['held_out']}: serving {gate['chosen']}; " + "; ".join(parts)
