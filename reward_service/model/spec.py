"""What a served model is: where it comes from, how it runs, how its logits become a reward."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Device = str  # "cpu", "cuda", "cuda:1" or "auto"
# auto: the precision the folder's precision gate chose, where the device computes it natively.
DType = Literal["auto", "float32", "float16", "bfloat16"]
BackendName = Literal["auto", "torch", "onnx"]

DEFAULT_MODEL_NAME = "default"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelSpec(BaseModel):
    """One model to serve: where it comes from, how it runs, and how its logits become a reward."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str = Field(
        description="A local Hugging Face folder, or a hub id where a network exists."
    )
    backend: BackendName = "auto"
    device: Device = "cpu"
    dtype: DType = "float32"
    allow_pickle: bool = Field(
        False, description="Load pickle (.bin) weights, which can run code; safetensors otherwise."
    )
    preset: str | None = None
    mapping_overrides: dict[str, Any] = Field(default_factory=dict)
