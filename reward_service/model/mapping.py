"""How a sequence classifier's output logits become one float reward per item.

A model folder may carry a ``reward_config.json`` (a partial :class:`RewardMapping`); well-known
hub models get a preset; the command line may override any field. :func:`build_mapping` merges
those layers, :func:`resolve` binds the result to one model's labels, and
:meth:`ResolvedMapping.map_logits` turns a batch of logits into rewards::

    reward = (scale * reduce(weights * activation(logits)[:, indices]) + shift - mean) / std

Everything here is pure: no model, no tokenizer, no filesystem access except
:func:`load_reward_config`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reward_service.errors import MappingError, describe_validation_errors
from reward_service.model.markup import DEFAULT_STRIP_MARKUP

REWARD_CONFIG_FILENAME = "reward_config.json"

Activation = Literal["none", "softmax", "log_softmax", "sigmoid"]
Reduce = Literal["sum", "max", "min"]
InputFormat = Literal["text", "pair", "template", "chat"]

# Label names that mark the "good" class of a two-label classifier, compared case-insensitively.
POSITIVE_LABEL_NAMES = ("positive", "pos")


class OutputSelector(BaseModel):
    """One classifier output that contributes to the reward."""

    # Frozen because PRESETS are shared module-level values.
    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str | int = Field(
        description="Label name (matched case-insensitively against the model's id2label) or index."
    )
    weight: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_label(cls, value: Any) -> Any:
        # Lets a config say `"outputs": ["POSITIVE"]` instead of `[{"label": "POSITIVE"}]`.
        if isinstance(value, str | int):
            return {"label": value}
        return value


class Normalization(BaseModel):
    """Applied last, so rewards from different models land on a comparable scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float
    std: float = Field(gt=0)


class RewardMapping(BaseModel):
    """Everything optional, so a partial JSON file or a few CLI flags form a valid layer.

    Only fields explicitly set in a layer override earlier layers (see :func:`build_mapping`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = Field(
        default=None, description="Preset this mapping started from (informational once merged)."
    )
    description: str | None = Field(default=None, description="Free text shown in GET /v1/models.")
    outputs: list[OutputSelector] | None = Field(
        default=None,
        min_length=1,
        description="None: the single label; of two labels the positive one (else index 1); "
        "with reduce max/min every label.",
    )
    activation: Activation | None = Field(
        default=None,
        description="None: sigmoid for multi-label classifiers, otherwise none.",
    )
    reduce: Reduce = Field("sum", description="How the selected outputs combine.")
    scale: float = Field(1.0, description="reward = scale * value + shift.")
    shift: float = 0.0
    normalization: Normalization | None = Field(None, description="Then (reward - mean) / std.")
    input_format: InputFormat = Field(
        "template",
        description="How a prompt and completion reach the tokenizer: the completion alone "
        "(text), as a tokenizer text pair (pair), joined by the template, or as a user and an "
        "assistant message rendered by the model's own chat template (chat).",
    )
    template: str = Field("{prompt}{completion}", description="e.g. '{prompt}\\n{completion}'.")
    max_length: int | None = Field(
        default=None, gt=0, description="Tokens per item, at most (the model's limit if lower)."
    )
    truncation_side: Literal["right", "left"] = Field(
        "right", description="Which end a too-long item loses."
    )
    strip_markup: list[str] | None = Field(
        default=None,
        description="Chat markup removed from texts, prompts and completions before scoring: "
        "template names (chatml, llama3, llama2, special-tokens) and/or literal strings. "
        "None: every known template; [] keeps texts as sent.",
    )

    @field_validator("strip_markup")
    @classmethod
    def _markers_are_not_empty(cls, entries: list[str] | None) -> list[str] | None:
        if entries is not None and not all(entries):
            raise ValueError("strip_markup entries must be non-empty strings")
        return entries

    @property
    def markup_to_strip(self) -> tuple[str, ...]:
        """`strip_markup` with its default decided."""
        return DEFAULT_STRIP_MARKUP if self.strip_markup is None else tuple(self.strip_markup)

    @field_validator("template")
    @classmethod
    def _template_places_the_completion(cls, template: str) -> str:
        if "{completion}" not in template:
            raise ValueError("template must contain {completion}")
        return template


PRESETS: dict[str, RewardMapping] = {
    # As TRL's sentiment example: the raw POSITIVE logit of the prompt and completion together.
    "sentiment": RewardMapping(
        description="POSITIVE logit of a sentiment classifier",
        outputs=[OutputSelector(label="POSITIVE")],
        activation="none",
        input_format="template",
    ),
    # Toxicity scores only the completion: detoxification prompts are often toxic on purpose,
    # and the policy should be neither blamed nor credited for them.
    "toxicity": RewardMapping(
        description="-P(toxic) of a multi-label toxicity classifier",
        outputs=[OutputSelector(label="toxic")],
        activation="sigmoid",
        scale=-1.0,
        input_format="text",
    ),
    "toxicity-any": RewardMapping(
        description="1 - max P(label) over every toxicity label",
        activation="sigmoid",
        reduce="max",  # with no outputs, max means "over every label"
        scale=-1.0,
        shift=1.0,
        input_format="text",
    ),
    "hate": RewardMapping(
        description="nothate logit of a binary hate-speech classifier",
        outputs=[OutputSelector(label="nothate")],
        activation="none",
        input_format="text",
    ),
    # OpenAssistant's reward models are trained on (question, answer) tokenizer text pairs.
    "reward-model": RewardMapping(
        description="single-logit reward model on (prompt, completion) pairs",
        outputs=[OutputSelector(label=0)],
        activation="none",
        input_format="pair",
    ),
}

KNOWN_MODEL_PRESETS: dict[str, str] = {
    "lvwerra/distilbert-imdb": "sentiment",
    "distilbert-base-uncased-finetuned-sst-2-english": "sentiment",
    "distilbert/distilbert-base-uncased-finetuned-sst-2-english": "sentiment",
    "unitary/toxic-bert": "toxicity",
    "facebook/roberta-hate-speech-dynabench-r4-target": "hate",
    "OpenAssistant/reward-model-deberta-v3-large-v2": "reward-model",
    "OpenAssistant/reward-model-deberta-v3-large": "reward-model",
    "OpenAssistant/reward-model-deberta-v3-base": "reward-model",
}

_PRESET_BY_LOWERCASE_MODEL_ID = {
    model_id.lower(): name for model_id, name in KNOWN_MODEL_PRESETS.items()
}

# The Hugging Face cache stores `org/name` as `.../models--org--name/snapshots/<revision>`.
_HF_CACHE_FOLDER = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)(?:/|$)")


# --- reading and merging -------------------------------------------------------------------------


def load_reward_config(folder: Path) -> RewardMapping | None:
    """The mapping in ``folder/reward_config.json``, or None when the folder has none."""
    path = Path(folder) / REWARD_CONFIG_FILENAME
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MappingError(
            f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise MappingError(f"{path}: not UTF-8 text ({error.reason})") from None
    try:
        return RewardMapping.model_validate(content)
    except ValidationError as error:
        raise MappingError(f"{path}: {describe_validation_errors(error.errors())}") from None


def detect_preset(model_ref: str) -> str | None:
    """The preset for a known hub id, also found at the end of a local path; no filesystem access.

    ``unitary/toxic-bert``, ``/cache/unitary/toxic-bert`` and the Hugging Face cache folder
    ``.../models--unitary--toxic-bert/snapshots/<rev>`` all detect ``toxicity``.
    """
    reference = model_ref.replace("\\", "/").rstrip("/")
    components = reference.split("/")
    candidates = [reference, "/".join(components[-2:]), components[-1]]
    if cache_folder := _HF_CACHE_FOLDER.search(reference):
        candidates.append(f"{cache_folder.group(1)}/{cache_folder.group(2)}")
    for candidate in candidates:
        if preset := _PRESET_BY_LOWERCASE_MODEL_ID.get(candidate.lower()):
            return preset
    return None


def build_mapping(
    *,
    model_ref: str,
    folder_mapping: RewardMapping | None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RewardMapping:
    """Merge the layers, later winning field by field; a layer's unset fields change nothing.

    1. the preset detected from ``model_ref``;
    2. ``folder_mapping`` (reward_config.json);
    3. the explicitly named ``preset``;
    4. ``overrides``: RewardMapping fields, e.g. from CLI flags. Every key present applies,
       ``None`` included, so pass only the flags the user gave.

    A layer that names a ``preset`` itself (``{"preset": "toxicity", "scale": -2}``) starts from
    that preset. The result's ``preset`` is the last preset applied.
    """
    layers: list[dict[str, Any]] = []
    if detected := detect_preset(model_ref):
        layers.append(_preset_layer(detected))
    if folder_mapping is not None:
        layers += _with_named_preset(folder_mapping.model_dump(exclude_unset=True))
    if preset is not None:
        layers.append(_preset_layer(preset))
    if overrides:
        layers += _with_named_preset(_validated_overrides(overrides))

    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return RewardMapping.model_validate(merged)


def _preset_layer(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        raise MappingError(f"unknown reward preset {name!r}; known presets: {known}")
    return {**PRESETS[name].model_dump(exclude_unset=True), "preset": name}


def _with_named_preset(layer: dict[str, Any]) -> list[dict[str, Any]]:
    named = layer.get("preset")
    return [_preset_layer(named), layer] if named is not None else [layer]


def _validated_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return RewardMapping.model_validate(dict(overrides)).model_dump(exclude_unset=True)
    except ValidationError as error:
        raise MappingError(
            f"reward mapping override: {describe_validation_errors(error.errors())}"
        ) from None


# --- binding to a model --------------------------------------------------------------------------


def _identity(logits: np.ndarray) -> np.ndarray:
    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    # Subtracting the row maximum keeps exp() from overflowing; the result is unchanged.
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    # 1 / (1 + e^-x) written as exp(-log(1 + e^-x)): no overflow for large negative logits.
    return np.exp(-np.logaddexp(0.0, -logits))


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": _identity,
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "sigmoid": _sigmoid,
}


def activate(logits: np.ndarray, activation: Activation) -> np.ndarray:
    """`activation` applied to logits (one row per item) as a mapping applies it."""
    return _ACTIVATIONS[activation](logits)


_REDUCERS: dict[str, Callable[..., np.ndarray]] = {"sum": np.sum, "max": np.max, "min": np.min}


@dataclass(frozen=True)
class ResolvedMapping:
    """A mapping bound to one model: label names are indices, every default is decided."""

    indices: tuple[int, ...]
    weights: tuple[float, ...]
    activation: Activation
    reduce: Reduce
    scale: float
    shift: float
    mean: float = 0.0
    std: float = 1.0

    def map_logits(self, logits: np.ndarray) -> np.ndarray:
        """Rewards, float64 of shape (N,), for logits of shape (N, num_labels)."""
        values = np.asarray(logits, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"logits must have shape (N, num_labels), got {values.shape}")
        if max(self.indices) >= values.shape[1]:
            raise ValueError(
                f"logits have {values.shape[1]} labels but the mapping selects index "
                f"{max(self.indices)}"
            )
        activated = _ACTIVATIONS[self.activation](values)
        weighted = activated[:, list(self.indices)] * np.asarray(self.weights)
        combined = _REDUCERS[self.reduce](weighted, axis=1)
        reward = self.scale * combined + self.shift
        return (reward - self.mean) / self.std

    def objectives(self, logits: np.ndarray, id2label: Mapping[int, str]) -> dict[str, np.ndarray]:
        """What a reward combining several outputs is made of: each selected output's activated
        value, by label name (before its weight, the reduce and the scale), shape (N,) each."""
        labels = _labels_in_index_order(id2label)
        activated = activate(np.asarray(logits, dtype=np.float64), self.activation)
        return {labels[index]: activated[:, index] for index in dict.fromkeys(self.indices)}


def resolve(
    mapping: RewardMapping, *, id2label: Mapping[int, str], problem_type: str | None
) -> ResolvedMapping:
    """Bind ``mapping`` to a model's labels and problem type, deciding every default.

    Default outputs (``outputs is None``): with reduce max/min, every label; one label, that
    label; two labels, the one named positive/pos, else index 1; more labels is an error.
    Default activation: sigmoid for ``multi_label_classification``, otherwise none.
    """
    labels = _labels_in_index_order(id2label)
    if mapping.outputs is None:
        indices = _default_output_indices(labels, mapping.reduce)
        weights = (1.0,) * len(indices)
    else:
        indices = tuple(_label_index(output.label, labels) for output in mapping.outputs)
        weights = tuple(output.weight for output in mapping.outputs)
    normalization = mapping.normalization
    return ResolvedMapping(
        indices=indices,
        weights=weights,
        activation=mapping.activation or _default_activation(problem_type),
        reduce=mapping.reduce,
        scale=mapping.scale,
        shift=mapping.shift,
        mean=normalization.mean if normalization else 0.0,
        std=normalization.std if normalization else 1.0,
    )


def _default_activation(problem_type: str | None) -> Activation:
    # Multi-label heads are trained with per-label BCE, so their logits are meant for sigmoid.
    return "sigmoid" if problem_type == "multi_label_classification" else "none"


def _labels_in_index_order(id2label: Mapping[int, str]) -> list[str]:
    # Configs read from raw JSON carry string keys ("0"); transformers' configs carry ints.
    by_index = {int(index): name for index, name in id2label.items()}
    if sorted(by_index) != list(range(len(by_index))) or not by_index:
        raise MappingError(f"model id2label must number its labels 0..N-1, got {dict(id2label)}")
    return [by_index[index] for index in range(len(by_index))]


def _describe_labels(labels: list[str]) -> str:
    return ", ".join(f"{index}={name}" for index, name in enumerate(labels))


def _default_output_indices(labels: list[str], reduce: Reduce) -> tuple[int, ...]:
    if reduce in ("max", "min"):
        return tuple(range(len(labels)))
    if len(labels) == 1:
        return (0,)
    if len(labels) == 2:
        positive = [i for i, name in enumerate(labels) if name.lower() in POSITIVE_LABEL_NAMES]
        return (positive[0],) if positive else (1,)
    raise MappingError(
        f"the model has {len(labels)} labels ({_describe_labels(labels)}), too many to guess "
        f'the reward from; choose it with `outputs` (e.g. [{{"label": "{labels[-1]}"}}]) '
        "or combine every label with reduce max/min"
    )


def _label_index(label: str | int, labels: list[str]) -> int:
    if isinstance(label, str):
        matches = [i for i, name in enumerate(labels) if name.lower() == label.lower()]
        if len(matches) > 1:
            raise MappingError(
                f"output label {label!r} matches several of the model's labels "
                f"({_describe_labels(labels)}); select it by index"
            )
        if matches:
            return matches[0]
        if not label.strip().isdecimal():
            raise MappingError(
                f"unknown output label {label!r}; "
                f"the model's labels are: {_describe_labels(labels)}"
            )
        label = int(label)  # "1" from a command line means index 1 when no label is named "1"
    if not 0 <= label < len(labels):
        raise MappingError(
            f"output index {label} is out of range: the model has {len(labels)} labels "
            f"({_describe_labels(labels)})"
        )
    return label


# --- what clients are told -----------------------------------------------------------------------


def mapping_summary(
    mapping: RewardMapping, resolved: ResolvedMapping, id2label: Mapping[int, str]
) -> dict[str, Any]:
    """A JSON-ready description of how this model's logits become rewards, for GET /v1/models."""
    labels = _labels_in_index_order(id2label)
    return {
        "preset": mapping.preset,
        "description": mapping.description,
        "outputs": [
            {"label": labels[index], "index": index, "weight": weight}
            for index, weight in zip(resolved.indices, resolved.weights, strict=True)
        ],
        "activation": resolved.activation,
        "reduce": resolved.reduce,
        "scale": resolved.scale,
        "shift": resolved.shift,
        "normalization": (
            mapping.normalization.model_dump() if mapping.normalization is not None else None
        ),
        "input_format": mapping.input_format,
        "template": mapping.template,
        "max_length": mapping.max_length,
        "truncation_side": mapping.truncation_side,
        "strip_markup": list(mapping.markup_to_strip),
    }
