"""Backends run a model: padded token ids in, logits out, nothing else."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str
    device: str
    dtype: str

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """Logits as float32, shape (batch, num_labels)."""
        ...
