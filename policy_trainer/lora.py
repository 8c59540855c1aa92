"""LoRA adapters (through peft) for SFT and PPO: options, command-line flags, and applying them.

With LoRA only the adapters train; the base weights stay frozen. That is what lets PPO use the
base model itself as its reference policy: ``with model.disable_adapter(): ...`` runs the frozen
base, so no second copy of the weights is held. ``--lora-r 0`` (the default) turns LoRA off.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

# peft's shorthand for every linear layer but the output head: in a Llama block the attention
# projections (q, k, v, o) and the MLP (gate, up, down).
ALL_LINEAR = "all-linear"


class LoraOptions(BaseModel):
    """LoRA settings; ``r == 0`` means no LoRA (full fine-tuning)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    r: int = Field(0, ge=0, description="Rank of the adapters; 0 turns LoRA off.")
    alpha: float = Field(16.0, gt=0, description="Scaling: the update is (alpha / r) * B @ A.")
    # No dropout by default: PPO compares log-probs of the same tokens under the rollout and the
    # update passes, and dropout would make them differ for no reason.
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | str = Field(
        ALL_LINEAR, description="Module names to adapt, or 'all-linear' (all but the output head)."
    )

    @property
    def enabled(self) -> bool:
        return self.r > 0


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--lora-*`` flags, in their own group."""
    defaults = LoraOptions()
    group = parser.add_argument_group("LoRA (peft)")
    group.add_argument(
        "--lora-r", type=int, default=defaults.r,
        help="LoRA rank; 0 (default) trains every weight instead",
    )  # fmt: skip
    group.add_argument(
        "--lora-alpha", type=float, default=defaults.alpha,
        help=f"LoRA scaling: updates are scaled by alpha / r (default {defaults.alpha:g})",
    )  # fmt: skip
    group.add_argument(
        "--lora-dropout", type=float, default=defaults.dropout,
        help=f"dropout on the adapters' input (default {defaults.dropout:g})",
    )  # fmt: skip
    group.add_argument(
        "--lora-target-modules",
        nargs="+",
        default=[ALL_LINEAR],
        metavar="NAME",
        help="module names to adapt, e.g. q_proj v_proj; default: all-linear (every linear layer "
        "of attention and MLP, not the output head)",
    )


def lora_options_from_args(args: argparse.Namespace) -> LoraOptions:
    modules = list(args.lora_target_modules)
    return LoraOptions(
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        target_modules=ALL_LINEAR if modules == [ALL_LINEAR] else modules,
    )


def apply_lora(model: PreTrainedModel, options: LoraOptions) -> PeftModel:
    """``model`` wrapped with fresh LoRA adapters; only the adapters require gradients.

    A fresh adapter starts as the identity (peft initialises B to zero), so the wrapped model's
    outputs equal the base's until it trains.
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if not options.enabled:
        raise ValueError("apply_lora needs r > 0 (r = 0 means no LoRA)")
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=options.target_modules,
    )
    return get_peft_model(model, config)


def merge_lora(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """A plain model with the adapters folded into its weights (a no-op without adapters), so the
    saved folder loads anywhere a normal Hugging Face model does."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
