"""From a model reference (local folder or hub id) to everything the engine needs to serve it."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reward_service.errors import MappingError, ModelLoadError, first_line
from reward_service.model.backends import Backend
from reward_service.model.backends.onnx import ONNX_FILENAME, OnnxBackend
from reward_service.model.inputs import ChatRenderer, TokenizerInput
from reward_service.model.mapping import (
    ResolvedMapping,
    RewardMapping,
    build_mapping,
    load_reward_config,
    resolve,
)
from reward_service.model.precision import resolve_dtype
from reward_service.model.spec import ModelSpec
from reward_service.model.tokenization import TextEncoder

logger = logging.getLogger(__name__)

SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ScoredInputs:
    rewards: np.ndarray  # float64, (N,)
    logits: np.ndarray  # float32, (N, num_labels)
    truncated: int  # items cut to the model's max_length


@dataclass
class LoadedModel:
    """A model ready to score: its backend, tokenizer and reward mapping, bound together."""

    spec: ModelSpec
    folder: Path
    backend: Backend
    encoder: TextEncoder
    id2label: dict[int, str]
    problem_type: str | None
    mapping: RewardMapping
    resolved: ResolvedMapping
    # The model's chat template (None where its tokenizer has none), for input_format chat.
    render_chat: ChatRenderer | None = None

    def score(self, inputs: Sequence[TokenizerInput], *, batch_size: int = 64) -> ScoredInputs:
        """Rewards for tokenizer inputs (see model.inputs.format_inputs), in order, exactly as the
        service computes them: the offline scoring path of `reward-service score`, evaluation,
        tracking and the export's parity check."""
        return score_encoded(self.encoder, self.backend, self.resolved, inputs, batch_size)


def score_encoded(
    encoder: TextEncoder,
    backend: Backend,
    resolved: ResolvedMapping,
    inputs: Sequence[TokenizerInput],
    batch_size: int = 64,
) -> ScoredInputs:
    """Tokenise, run in batches of similar length (less padding), map logits to rewards."""
    encoded = encoder.encode(inputs)
    order = sorted(range(len(encoded)), key=lambda index: len(encoded[index].input_ids))
    logits: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        batch_logits = backend.forward(encoder.pad([encoded[index] for index in batch]))
        if logits is None:
            logits = np.empty((len(encoded), batch_logits.shape[1]), dtype=np.float32)
        logits[batch] = batch_logits
    if logits is None:
        return ScoredInputs(np.empty(0), np.empty((0, 0), dtype=np.float32), 0)
    truncated = sum(item.truncated for item in encoded)
    return ScoredInputs(resolved.map_logits(logits), logits, truncated)


def resolve_model_folder(source: str, *, allow_pickle: bool) -> Path:
    """A local folder as it is, or a hub id fetched into the local cache where a network exists."""
    path = Path(source).expanduser()
    if path.exists():
        return check_model_folder(path, allow_pickle=allow_pickle)
    if source.startswith((".", "/", "~")) or not HUB_ID_PATTERN.match(source):
        raise ModelLoadError(f"model folder {source!r} does not exist")
    return check_model_folder(_fetch_from_hub(source, allow_pickle), allow_pickle=allow_pickle)


def _fetch_from_hub(repo_id: str, allow_pickle: bool) -> Path:
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    if allow_pickle:
        patterns.append("*.bin")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as error:  # the hub client raises many types; all mean "not available"
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(
                f"{repo_id!r} is not a local folder, and as a Hugging Face Hub id it is not in the "
                f"local cache while offline mode is on (HF_HUB_OFFLINE=1): pass a local model "
                f"folder, or fetch the model where a network exists"
            ) from None
        raise ModelLoadError(
            f"{repo_id!r} is not a local folder, and fetching it from the Hugging Face Hub failed "
            f"({first_line(error)}); on a machine without a network set HF_HUB_OFFLINE=1 and "
            "pass a local model folder"
        ) from None


def check_model_folder(folder: Path, *, allow_pickle: bool) -> Path:
    """Refuse, in one line, a folder that cannot be served safely and completely."""
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a Hugging Face model folder")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise ModelLoadError(f"{folder} has no tokenizer (tokenizer.json or vocab.txt)")
    has_safe = any((folder / name).is_file() for name in SAFE_WEIGHT_FILES)
    has_pickle = any((folder / name).is_file() for name in PICKLE_WEIGHT_FILES)
    has_onnx = (folder / ONNX_FILENAME).is_file()  # a `reward-service export` folder
    if not has_safe and not has_onnx and has_pickle and not allow_pickle:
        raise ModelLoadError(
            f"{folder} holds only pickle weights (pytorch_model.bin), which can run code when "
            f"loaded: convert them to safetensors, or pass --allow-pickle if you trust the source"
        )
    if not has_safe and not has_pickle and not has_onnx:
        raise ModelLoadError(f"{folder} has no weights (model.safetensors or {ONNX_FILENAME})")
    return folder


def read_config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{folder / 'config.json'} is not valid JSON: {error}") from None


# OpenRLHF saves its reward models as the base decoder plus a one-output `value_head` linear layer
# (openrlhf/models/model.py, get_llm_for_sequence_regression): the keys of a transformers
# sequence classifier but for the head, which transformers calls `score`.
VALUE_HEAD_KEY = "value_head.weight"


def value_head_file(folder: Path) -> Path | None:
    """The safetensors file holding an OpenRLHF value head, where the folder is such a model."""
    from safetensors import safe_open

    for weights in sorted(folder.glob("*.safetensors")):
        with safe_open(weights, framework="numpy") as opened:
            if VALUE_HEAD_KEY in opened.keys():  # noqa: SIM118 (safe_open has no __contains__)
                return weights
    return None


def padding_token_id(config: dict, tokenizer) -> int:
    """The id batches are padded with. A decoder classifier (Llama, Qwen, Mistral...) reads each
    item's reward at its last token that is not `config.pad_token_id`, so padding must use that
    very id: the model's own, else its tokenizer's pad token, else its EOS (decoder tokenizers
    often have no pad token), else 0."""
    candidates = (config.get("pad_token_id"), tokenizer.pad_token_id, tokenizer.eos_token_id)
    return next((c for c in candidates if isinstance(c, int) and not isinstance(c, bool)), 0)


def model_max_length(config: dict, tokenizer_limit: int | None) -> int:
    """The longest input the model takes: its position table, or the tokenizer's limit if lower."""
    limits = [config.get("max_position_embeddings") or 512]
    if tokenizer_limit and tokenizer_limit < 1_000_000:  # transformers uses ~1e30 for "unset"
        limits.append(tokenizer_limit)
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        limits[0] -= 2  # their position ids start after the padding index
    return min(limits)


def load_model(spec: ModelSpec) -> LoadedModel:
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    # Our own one-line errors replace transformers' load reports and progress bars.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()

    folder = resolve_model_folder(spec.source, allow_pickle=spec.allow_pickle)
    config = read_config(folder)
    value_head = value_head_file(folder)
    id2label = {int(index): label for index, label in (config.get("id2label") or {}).items()}
    if value_head is not None:
        id2label = {0: "LABEL_0"}  # one output, whatever the base model's config says
    elif not id2label:
        id2label = {index: f"LABEL_{index}" for index in range(config.get("num_labels", 2))}
    problem_type = config.get("problem_type")

    try:
        mapping = build_mapping(
            model_ref=spec.source,
            folder_mapping=load_reward_config(folder),
            preset=spec.preset,
            overrides=spec.mapping_overrides,
        )
        resolved = resolve(mapping, id2label=id2label, problem_type=problem_type)
    except MappingError as error:
        raise ModelLoadError(f"model {spec.name!r}: {error}") from None

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except Exception as error:  # tokenizer classes raise anything from OSError to TypeError
        raise ModelLoadError(f"could not load the tokenizer in {folder}: {error}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{folder} has no fast tokenizer (tokenizer.json); one is required")
    limit = model_max_length(config, tokenizer.model_max_length)
    max_length = min(mapping.max_length or limit, limit)
    pad_token_id = padding_token_id(config, tokenizer)
    encoder = TextEncoder(
        tokenizer.backend_tokenizer,
        max_length=max_length,
        truncation_side=mapping.truncation_side,
        pad_token_id=pad_token_id,
        input_names=[
            name
            for name in tokenizer.model_input_names
            if name in ("input_ids", "token_type_ids", "attention_mask")
        ],
    )
    backend = load_backend(
        spec,
        folder,
        input_names=encoder.input_names,
        num_labels=len(id2label),
        pad_token_id=pad_token_id,
        value_head=value_head,
    )
    logger.info(
        "loaded %s from %s (%s %s on %s)",
        spec.name,
        folder,
        backend.name,
        backend.dtype,
        backend.device,
    )
    render_chat = chat_renderer(tokenizer) if getattr(tokenizer, "chat_template", None) else None
    if mapping.input_format == "chat" and render_chat is None:
        raise ModelLoadError(
            f"model {spec.name!r}: input_format chat needs a chat template, and the tokenizer "
            f"in {folder} has none (tokenizer_config.json chat_template or chat_template.jinja)"
        )
    return LoadedModel(
        spec, folder, backend, encoder, id2label, problem_type, mapping, resolved, render_chat
    )


def chat_renderer(tokenizer) -> ChatRenderer:
    """A prompt and completion as the user's and the assistant's message, in the tokenizer's chat
    template, as decoder reward models (Skywork-Reward, ...) are trained to read them. Where the
    template writes the BOS token and the tokenizer adds it too, the template's is dropped, as
    `apply_chat_template(tokenize=True)` does by not adding special tokens."""
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]

    def render(prompt: str, completion: str) -> str:
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        return text[len(bos) :] if adds_bos and text.startswith(bos) else text

    return render


def load_backend(
    spec: ModelSpec,
    folder: Path,
    *,
    input_names: tuple[str, ...],
    num_labels: int,
    pad_token_id: int,
    value_head: Path | None = None,
) -> Backend:
    """`auto` runs model.onnx where the folder holds one (an exported folder), PyTorch otherwise."""
    backend = spec.backend
    if backend == "auto":
        backend = "onnx" if (folder / ONNX_FILENAME).is_file() else "torch"
    dtype = resolve_dtype(spec.dtype, folder, backend=backend, device=spec.device)
    if backend == "onnx":
        return OnnxBackend.load(
            folder,
            device=spec.device,
            dtype=dtype,
            input_names=input_names,
            num_labels=num_labels,
        )
    from reward_service.model.backends.torch import TorchBackend

    return TorchBackend.load(
        folder,
        device=spec.device,
        dtype=dtype,
        allow_pickle=spec.allow_pickle,
        pad_token_id=pad_token_id,
        value_head=(value_head, VALUE_HEAD_KEY) if value_head is not None else None,
    )
