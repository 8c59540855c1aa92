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
    def load(
        cls,
        folder: Path,
        *,
        device: str,
        dtype: str,
        allow_pickle: bool,
        pad_token_id: int,
        value_head: tuple[Path, str] | None = None,
    ) -> TorchBackend:
        """`pad_token_id`: the id batches are padded with, which a decoder classifier's config
        must name to find each item's last token. `value_head`: the safetensors file and key of
        an OpenRLHF value head, loaded as the classifier's one-output head."""
        torch_device = resolve_device(device)
        head_options = {"num_labels": 1} if value_head else {}
        try:
            model, loading_info = AutoModelForSequenceClassification.from_pretrained(
                folder,
                dtype=TORCH_DTYPES[dtype],
                trust_remote_code=False,
                use_safetensors=None if allow_pickle else True,
                output_loading_info=True,
                **head_options,
            )
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(
                f"could not load a sequence classifier from {folder}: {first_line(error)}"
            ) from None
        missing = loading_info.get("missing_keys") or []
        if value_head:
            missing = load_value_head(model, *value_head, missing)
        # Decoder classifiers pool at the last token that is not the config's pad id; without
        # one they refuse batches of more than one item.
        model.config.get_text_config().pad_token_id = pad_token_id
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


def load_value_head(
    model: torch.nn.Module, weights: Path, key: str, missing: list[str]
) -> list[str]:
    """Copies an OpenRLHF value head (`key` in the `weights` file) into the classifier's head
    (`score` on decoder classifiers) and returns the weights still missing."""
    from safetensors import safe_open

    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        raise ModelLoadError(
            f"{weights.parent} holds an OpenRLHF value head ({key}), but "
            f"{type(model).__name__} has no bias-free `score` layer to load it into: convert it "
            "to a transformers sequence classifier (rename the weight to score.weight, set "
            '"architectures" to the *ForSequenceClassification class and "num_labels": 1)'
        )
    with safe_open(weights, framework="pt") as opened:
        value = opened.get_tensor(key)
    if value.shape != head.weight.shape:
        raise ModelLoadError(
            f"{weights}: the value head {key} has shape {tuple(value.shape)}, the model's head "
            f"{tuple(head.weight.shape)}"
        )
    with torch.no_grad():
        head.weight.copy_(value.to(head.weight.dtype))
    return [name for name in missing if name != "score.weight"]
