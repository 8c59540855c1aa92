"""PyTorch backend: a transformers sequence classifier in inference mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from reward_service.errors import ModelLoadError, first_line

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for, but torch sees no CUDA device")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ModelLoadError(f"unknown device {device!r}: {error}") from None


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: str) -> None:
        self.model = model
        self._device = device
        self.device = str(device)
        self.dtype = dtype

    @classmethod
    def load(cls, folder: Path, *, device: str, dtype: str, allow_pickle: bool) -> TorchBackend:
        torch_device = resolve_device(device)
        try:
            model, loading_info = AutoModelForSequenceClassification.from_pretrained(
                folder,
                dtype=TORCH_DTYPES[dtype],
                trust_remote_code=False,
                use_safetensors=None if allow_pickle else True,
                output_loading_info=True,
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(
                f"could not load a sequence classifier from {folder}: {first_line(error)}"
            ) from None
        missing = loading_info.get("missing_keys") or []
        if missing:
            # A base encoder (e.g. BertModel) loads "fine" with a freshly random head; serving
            # that as a reward would silently return noise.
            raise ModelLoadError(
                f"{folder} is not a trained sequence classifier: {len(missing)} weights are "
                f"missing and would be random ({', '.join(sorted(missing)[:3])}...)"
            )
        model.eval()  # dropout off
        model.to(torch_device)
        return cls(model, torch_device, dtype)

    @torch.inference_mode()
    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {
            name: torch.from_numpy(array).to(self._device) for name, array in features.items()
        }
        logits = self.model(**inputs).logits
        return logits.float().cpu().numpy()
