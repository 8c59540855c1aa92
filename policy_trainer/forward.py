"""Forward passes over prompt + response: logits, log-probs and entropies of the response tokens.

One place for what every such pass must get right, shared by the rollout, the value model, the
PPO updates and evaluation ("N-impl" is Huang et al. 2023, "The N Implementation Details of RLHF
with PPO", which reproduces OpenAI's lm-human-preferences):
- position ids come from the attention mask, so a left-padded prompt is positioned as it would be
  alone (N-impl: padding must not shift positions);
- the logits are divided by the sampling temperature, so that the log-probs are those of the
  distribution actually sampled from (N-impl: without it the KL grows too fast);
- only the response's logits are computed where the model allows it (`logits_to_keep`).
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch

from policy_trainer.ppo_math import entropy_from_logits, logprobs_from_logits


class ResponseBatch(Protocol):
    """Prompts and responses side by side, as a forward pass reads them (`rollout.Generation`)."""

    @property
    def input_ids(self) -> torch.Tensor: ...  # (batch, prompt + response length)

    @property
    def attention_mask(self) -> torch.Tensor: ...  # (batch, prompt + response length)

    @property
    def response_ids(self) -> torch.Tensor: ...  # (batch, response length)


def position_ids_from_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2... from each row's first real token, so a left-padded prompt is positioned as it
    would be alone."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def response_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_length: int,
    temperature: float,
    **model_kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The logits that predict each response token, divided by the sampling temperature, and the
    model output. `input_ids` is prompt + response; position ids come from the attention mask."""
    if _takes_logits_to_keep(model):
        # The prompt's logits are never used: at (batch, prompt, vocabulary) they can outweigh
        # everything else in memory.
        model_kwargs.setdefault("logits_to_keep", response_length + 1)
    output = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_attention_mask(attention_mask),
        use_cache=False,
        **model_kwargs,
    )
    # Position i predicts token i + 1: the response's logits start one before it.
    logits = output.logits[:, -response_length - 1 : -1].float() / temperature
    return logits, output


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM (under a peft wrapper, if any) can skip computing some logits."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module,
    batch: ResponseBatch,
    *,
    temperature: float,
    forward_batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, entropies) of each response token under `model`, (batch, response_length),
    in forward passes of at most `forward_batch_size` rows."""
    input_ids, attention_mask, response_ids = (
        batch.input_ids,
        batch.attention_mask,
        batch.response_ids,
    )
    logprobs, entropies = [], []
    for start in range(0, response_ids.shape[0], forward_batch_size):
        rows = slice(start, start + forward_batch_size)
        logits, _ = response_logits(
            model, input_ids[rows], attention_mask[rows], response_ids.shape[1], temperature
        )
        logprobs.append(logprobs_from_logits(logits, response_ids[rows]))
        entropies.append(entropy_from_logits(logits))
    return torch.cat(logprobs), torch.cat(entropies)
