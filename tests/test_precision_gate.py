"""The precision gate: a faster precision is served (--dtype auto) only where it keeps the
model's ranking against float32 on held-out human judgements, and the hardware runs it natively."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from helpers import HTTP_TIMEOUT_S, build_tiny_classifier

from reward_service.model.precision import PRECISION_GATE_FILENAME, native_bf16, resolve_dtype
from reward_service.training.evaluate import HeldOutSet, pairs_by_score_gap
from reward_service.training.precision_gate import (
    MIN_SPEARMAN,
    judge,
    run_gate,
)

WORDS = "good bad great awful fine dull lovely boring superb weak".split()


def held_out_of(human: np.ndarray) -> HeldOutSet:
    better, worse = pairs_by_score_gap(human, min_gap=1.0)
    return HeldOutSet([("", str(i)) for i in range(len(human))], better, worse, human)


@pytest.fixture()
def ranked() -> tuple[np.ndarray, HeldOutSet]:
    """200 items whose float32 rewards follow the human scores, with noise."""
    rng = np.random.default_rng(0)
    human = rng.uniform(-4, 4, 200)
    return human + rng.normal(0, 0.5, 200), held_out_of(human)


def test_a_precision_whose_rewards_round_slightly_differently_passes(ranked):
    float32, held_out = ranked
    rounded = float32.astype(np.float16).astype(np.float64)  # about 3 decimal digits kept
    verdict = judge("bfloat16", float32, rounded, held_out)
    assert verdict.passed, verdict.reason
    assert verdict.spearman_vs_float32 >= MIN_SPEARMAN
    assert verdict.max_abs_reward_diff > 0


def test_a_precision_that_reorders_the_rewards_is_refused_and_says_why(ranked):
    float32, held_out = ranked
    shuffled = float32.copy()
    random.Random(0).shuffle(shuffled)  # the same values, ranked anew
    verdict = judge("bfloat16", float32, shuffled, held_out)
    assert not verdict.passed
    assert "Spearman with float32" in verdict.reason
    assert "pairwise accuracy" in verdict.reason


def test_a_loss_of_pairwise_accuracy_beyond_the_allowance_is_refused_even_at_high_spearman():
    """100 items, human scores 0..99 (4,950 pairs): 40 neighbours swapped move the ranking
    little (Spearman 0.9995) but lose 40 / 4,950 = 0.008 of pairwise accuracy (allowed: 0.005)."""
    human = np.arange(100, dtype=float)
    float32 = human.copy()
    candidate = human.copy()
    for first in range(0, 80, 2):
        candidate[[first, first + 1]] = candidate[[first + 1, first]]
    verdict = judge("bfloat16", float32, candidate, held_out_of(human))
    assert verdict.spearman_vs_float32 == pytest.approx(1 - 6 * 80 / (100 * 9999))
    assert verdict.float32_pairwise_accuracy == 1.0
    assert verdict.pairwise_accuracy == pytest.approx(1 - 40 / 4950)
    assert not verdict.passed
    assert "below float32's" in verdict.reason and "Spearman" not in verdict.reason


def test_auto_serves_what_the_folder_gate_chose_where_the_device_runs_it(tmp_path, monkeypatch):
    gated = tmp_path / "gated"
    gated.mkdir()
    (gated / PRECISION_GATE_FILENAME).write_text(json.dumps({"chosen": "bfloat16"}))
    ungated = tmp_path / "plain"
    ungated.mkdir()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert resolve_dtype("auto", gated, backend="torch", device="cpu") == "bfloat16"
    assert resolve_dtype("auto", ungated, backend="torch", device="cpu") == "float32"
    assert resolve_dtype("auto", gated, backend="onnx", device="cpu") == "float32"
    assert resolve_dtype("float32", gated, backend="torch", device="cpu") == "float32"
    # A CPU that only emulates bf16 computes it slower than float32.
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_dtype("auto", gated, backend="torch", device="cpu") == "float32"
    assert resolve_dtype("bfloat16", gated, backend="torch", device="cpu") == "bfloat16"


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_classifier(
        tmp_path_factory.mktemp("gate") / "tiny", labels=["NEGATIVE", "POSITIVE"]
    )


def test_the_gate_refuses_bf16_for_a_model_whose_rewards_it_cannot_tell_apart(tiny_classifier):
    """The tiny classifier's rewards lie within a few thousandths of each other, finer than
    bf16's 8 bits resolve: its ranking does not survive, and the folder says so."""
    from reward_service.training.evaluate import score_folder

    rng = random.Random(0)
    inputs = [("", " ".join(rng.choice(WORDS) for _ in range(12))) for _ in range(150)]
    float32 = score_folder(tiny_classifier, inputs, dtype="float32")
    # Human scores that follow the float32 rewards, so float32 ranks them well.
    human = (float32 - float32.mean()) / float32.std() * 2
    better, worse = pairs_by_score_gap(human, min_gap=1.0)
    held_out = HeldOutSet(inputs, better, worse, human)
    gate = run_gate(tiny_classifier, held_out, held_out_name="seeded texts")
    assert json.loads((tiny_classifier / PRECISION_GATE_FILENAME).read_text()) == gate
    (verdict,) = gate["candidates"]
    assert verdict["dtype"] == "bfloat16" and not verdict["passed"]
    assert verdict["float32_pairwise_accuracy"] == 1.0
    assert "Spearman with float32" in verdict["reason"]
    assert gate["chosen"] == "float32"
    assert gate["items"] == 150 and gate["held_out"] == "seeded texts"
    assert resolve_dtype("auto", tiny_classifier, backend="torch", device="cpu") == "float32"


def test_the_server_serves_the_gated_precision_by_default_and_float32_when_told(
    server_factory, tiny_classifier, tmp_path
):
    gated = tmp_path / "gated"
    shutil.copytree(tiny_classifier, gated)
    (gated / PRECISION_GATE_FILENAME).write_text(json.dumps({"chosen": "bfloat16"}))
    native = native_bf16("cpu")
    auto = server_factory(["--model", f"tiny={gated}"])
    told = server_factory(["--model", f"tiny={gated}", "--dtype", "float32"])
    for server, dtype in ((auto, "bfloat16" if native else "float32"), (told, "float32")):
        (model,) = httpx.get(f"{server.url}/v1/models", timeout=HTTP_TIMEOUT_S).json()["models"]
        assert model["dtype"] == dtype
        scored = httpx.post(
            f"{server.url}/v1/score", json={"texts": ["good fine"]}, timeout=HTTP_TIMEOUT_S
        )
        assert scored.status_code == 200, scored.text
