"""LoRA adapters (through peft) for SFT and PPO: applying them, and merging them for saving.

With LoRA only the adapters train; the base weights stay frozen. That is what lets PPO use the
base model itself as its reference policy: ``with model.disable_adapter(): ...`` runs the frozen
base, so no second copy of the weights is held. The options are `config.LoraOptions`;
``--lora-r 0`` (the default) turns LoRA off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from policy_trainer.config import LoraOptions

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


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
