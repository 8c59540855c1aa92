"""The value model V(s_t), and the policy and value model as the one module PPO trains.

A value is a scalar head on a transformer trunk's last hidden state, the head initialised to
zero (N-impl: the value starts out predicting 0 everywhere rather than noise). The trunk is a
separate copy of the policy's (the default; TRL, N-impl) or the policy's own (`shared`), where
the value loss also shapes the policy's representations and no second trunk is held. A value
model can't start from the reward model as in N-impl: that one is behind a remote endpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from policy_trainer.forward import position_ids_from_attention_mask, response_logits

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class ScalarHead(nn.Module):
    """hidden state -> one value, zero-initialised."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden_states.to(self.linear.weight.dtype)).squeeze(-1)


class ValueModel(nn.Module):
    """A transformer trunk (no LM head) and a scalar head: one value per position."""

    def __init__(self, trunk: PreTrainedModel) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = ScalarHead(trunk.config.hidden_size)

    @classmethod
    def from_policy_folder(cls, folder: str, dtype: torch.dtype = torch.float32) -> ValueModel:
        """The policy's trunk, loaded again from its folder (its LM head left out)."""
        from transformers import AutoModel

        trunk = AutoModel.from_pretrained(folder, dtype=dtype)
        trunk.eval()
        return cls(trunk)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.trunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_attention_mask(attention_mask),
            use_cache=False,
        )
        return self.head(output.last_hidden_state)


class PolicyAndValue(nn.Module):
    """The modules PPO trains, as one, so that accelerate wraps them (and DDP averages their
    gradients) together: the policy with a separate `value_model`, or with a `value_head` on its
    own trunk."""

    def __init__(
        self,
        policy: PreTrainedModel,
        *,
        value_model: ValueModel | None = None,
        value_head: ScalarHead | None = None,
    ) -> None:
        super().__init__()
        if (value_model is None) == (value_head is None):
            raise ValueError("give a separate value_model or a value_head on the policy's trunk")
        self.policy = policy
        self.value_model = value_model
        self.value_head = value_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_length: int,
        temperature: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits / temperature predicting each response token, the value before each response
        token), both over the response positions only."""
        shared = self.value_head is not None
        logits, output = response_logits(
            self.policy,
            input_ids,
            attention_mask,
            response_length,
            temperature,
            output_hidden_states=shared,
        )
        if shared:
            values = self.value_head(output.hidden_states[-1])
        else:
            values = self.value_model(input_ids, attention_mask)
        # The value of the state before response token t sits where its logits do.
        return logits, values[:, -response_length - 1 : -1].float()


def build_policy_and_value(
    policy: PreTrainedModel, policy_folder: str, value_model: str
) -> PolicyAndValue:
    """`value_model`: "separate" (a second trunk from the policy's folder) or "shared"."""
    if value_model == "shared":
        return PolicyAndValue(policy, value_head=ScalarHead(policy.config.hidden_size))
    dtype = next(policy.parameters()).dtype
    return PolicyAndValue(policy, value_model=ValueModel.from_policy_folder(policy_folder, dtype))
