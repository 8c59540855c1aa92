"""Once per epoch: the held-out figures, the best epoch's weights, and early stopping.

The held-out rewards come from the offline scoring path the service uses
(``model.loading.score_encoded``), run on the model being trained. ``callback()`` hands the tracker
to transformers' ``Trainer`` and TRL's ``RewardTrainer`` alike; the early-stopping metric is
held-out pairwise accuracy for every objective. torch and transformers are imported only once
training runs, so that importing this module (and starting `reward-service`) stays quick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
from tqdm.auto import tqdm

from reward_service.model.inputs import TokenizerInput
from reward_service.model.loading import score_encoded
from reward_service.model.mapping import ResolvedMapping
from reward_service.model.tokenization import TextEncoder
from reward_service.training.evaluate import EpochFigures, HeldOutSet, describe_figures, figures

HELD_OUT_BATCH_SIZE = 128


class HeldOutTracker:
    """Each epoch: held-out figures; keeps the best epoch's weights; early stopping."""

    def __init__(
        self,
        held_out: HeldOutSet,
        inputs: Sequence[TokenizerInput],
        encoder: TextEncoder,
        resolved: ResolvedMapping,
        patience: int,
    ) -> None:
        self.held_out = held_out
        self.inputs = inputs  # held_out.inputs as the tokenizer reads them
        self.encoder = encoder
        self.resolved = resolved
        self.patience = patience
        self.history: list[EpochFigures] = []
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.epochs_without_improvement = 0

    def end_epoch(self, epoch: int, model) -> bool:
        """Record the figures after ``epoch``; True when training should stop."""
        figures_now = figures(self.rewards(model), self.held_out)
        self.history.append(EpochFigures(epoch=epoch, **asdict(figures_now)))
        tqdm.write(f"epoch {epoch}: held-out {describe_figures(figures_now)}")
        best = max((f.pairwise_accuracy for f in self.history[:-1]), default=float("-inf"))
        if figures_now.pairwise_accuracy > best:
            self.best_epoch = epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.epochs_without_improvement = 0
            return False
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement >= self.patience:
            tqdm.write(f"early stop: no held-out improvement for {self.patience} epoch(s)")
            return True
        return False

    def restore_best(self, model) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def rewards(self, model) -> np.ndarray:
        """The model's reward for each held-out input, in eval mode, as the service scores."""
        from reward_service.model.backends.torch import TorchBackend  # torch: see the docstring

        was_training = model.training
        model.eval()
        backend = TorchBackend(model, next(model.parameters()).device, dtype="float32")
        scored = score_encoded(
            self.encoder, backend, self.resolved, self.inputs, HELD_OUT_BATCH_SIZE
        )
        model.train(was_training)
        return scored.rewards

    def callback(self):
        """A transformers ``TrainerCallback`` that runs ``end_epoch`` after each epoch."""
        from transformers import TrainerCallback

        tracker = self

        class HeldOutCallback(TrainerCallback):
            def on_epoch_end(self, args, state, control, model=None, **kwargs):
                epoch = round(state.epoch or len(tracker.history) + 1)
                if tracker.end_epoch(epoch, model):
                    control.should_training_stop = True
                return control

        return HeldOutCallback()
