"""Once per epoch: the held-out figures, the best epoch's weights, and early stopping.

A ``TrainerCallback``, so one tracker serves transformers' ``Trainer`` and TRL's ``RewardTrainer``
alike; the early-stopping metric is held-out pairwise accuracy for every objective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from reward_service.training.evaluate import HeldOutSet, figures
from reward_service.training.train import EpochFigures, describe_figures


class HeldOutTracker(TrainerCallback):
    """Each epoch: held-out figures; keeps the best epoch's weights; early stopping."""

    def __init__(
        self,
        held_out: HeldOutSet,
        input_ids: list[list[int]],
        to_reward: Callable[[np.ndarray], np.ndarray],
        patience: int,
        pad_token_id: int | None,
    ) -> None:
        self.held_out = held_out
        self.input_ids = input_ids
        self.to_reward = to_reward
        self.patience = patience
        self.pad_token_id = pad_token_id or 0
        self.history: list[EpochFigures] = []
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.epochs_without_improvement = 0

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        epoch = round(state.epoch or len(self.history) + 1)
        figures_now = figures(self._rewards(model), self.held_out)
        self.history.append(EpochFigures(epoch, **asdict(figures_now)))
        tqdm.write(f"epoch {epoch}: held-out {describe_figures(figures_now)}")
        best = max((f.pairwise_accuracy for f in self.history[:-1]), default=float("-inf"))
        if figures_now.pairwise_accuracy > best:
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
            if self.epochs_without_improvement >= self.patience:
                tqdm.write(f"early stop: no held-out improvement for {self.patience} epoch(s)")
                control.should_training_stop = True
        return control

    def restore_best(self, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def _rewards(self, model, batch_size: int = 128) -> np.ndarray:
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        order = sorted(range(len(self.input_ids)), key=lambda i: len(self.input_ids[i]))
        rewards = np.empty(len(order))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                longest = max(len(self.input_ids[i]) for i in batch)
                ids = torch.full((len(batch), longest), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), longest), dtype=torch.long)
                for row, index in enumerate(batch):
                    ids[row, : len(self.input_ids[index])] = torch.tensor(self.input_ids[index])
                    mask[row, : len(self.input_ids[index])] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                rewards[batch] = self.to_reward(logits.float().cpu().numpy())
        model.train(was_training)
        return rewards
