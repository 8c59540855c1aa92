"""The precision a model is served in under ``--dtype auto`` (the server's default).

float32, unless the model's folder holds a precision gate's verdict (``precision_gate.json``,
written by ``reward_service.training.precision_gate``) that a faster precision keeps its ranking,
and the hardware computes that precision natively: bf16 on a CPU without AVX-512 BF16 or AMX is
emulated and slower than float32. On this project's AVX-512 BF16 machine the default model runs
about three times faster with bf16 weights at batch 32 (``benchmarks/backends.py``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from reward_service.errors import ModelLoadError

PRECISION_GATE_FILENAME = "precision_gate.json"

logger = logging.getLogger(__name__)


def native_bf16(device: str) -> bool:
    """Whether `device` ("cpu", "cuda", "cuda:1", "auto") computes bf16 natively."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def gate_verdict(folder: Path) -> dict | None:
    """The folder's precision gate file, read; None where it has none."""
    path = folder / PRECISION_GATE_FILENAME
    if not path.is_file():
        return None
    try:
        verdict = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(verdict, dict) or not isinstance(verdict.get("chosen"), str):
        raise ModelLoadError(f"{path} names no chosen precision")
    return verdict


def resolve_dtype(requested: str, folder: Path, *, backend: str, device: str) -> str:
    """`requested` as it is, or for ``auto`` the precision the folder's gate chose where this
    device computes it natively, float32 otherwise (and always for ONNX graphs, which run as
    exported)."""
    if requested != "auto":
        return requested
    if backend == "onnx":
        return "float32"
    verdict = gate_verdict(folder)
    if verdict is None or verdict["chosen"] == "float32":
        return "float32"
    chosen = verdict["chosen"]
    if chosen == "bfloat16" and not native_bf16(device):
        logger.info(
            "%s: its precision gate chose bfloat16, but %s does not compute bf16 natively: "
            "serving float32",
            folder,
            device,
        )
        return "float32"
    return chosen
