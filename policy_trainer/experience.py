"""From a step's prompts to PPO's experience: everything the updates need, per response token.

As `ExperienceMaker.make_experience` reads top to bottom (OpenRLHF keeps this step in its
`experience_maker.py`, apart from the update loop; TRL's old `PPOTrainer.step` runs it inline):
1. sample responses from the policy (temperature, EOS stop);
2. send them to the reward service in the background, and meanwhile compute, without gradient,
   the policy's log-probs, entropies and values, and the reference's log-probs;
3. collect the scores, once every process has its own;
4. shape the scores (missing-EOS penalty, running scaling, clipping) -> per-token rewards
   (-beta * KL everywhere, the score on the last token) -> GAE -> whitened advantages, in the
   order of Huang et al. 2023, "The N Implementation Details of RLHF with PPO" ("N-impl").
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from policy_trainer.config import PPOConfig
from policy_trainer.forward import response_logprobs
from policy_trainer.ppo_math import (
    FixedKLController,
    RunningMoments,
    entropy_from_logits,
    logprobs_from_logits,
    shape_rewards,
    shaped_scores,
)
from policy_trainer.prompts import EncodedPrompt
from policy_trainer.rollout import (
    BackgroundScorer,
    Generation,
    ScoringJob,
    ScoringTimes,
    generate_responses,
)
from reward_service.client import RewardClientError, Unavailable

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


@dataclass
class Experience:
    """One step's batch (this process's share), everything the updates need, per token."""

    generation: Generation
    logprobs: torch.Tensor  # under the policy at rollout time ("old")
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    raw_scores: torch.Tensor  # as the reward service returned them
    scores: torch.Tensor  # after the missing-EOS penalty, scaling and clipping
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@dataclass(frozen=True)
class ExperienceTimes:
    """Where making one step's experience spent its time; the fields are step metrics."""

    generate_s: float
    rollout_forward_s: float
    score_s: float  # the scoring call, start to end
    score_wait_s: float  # how long the trainer blocked waiting for it
    score_overlap_s: float  # how much of it ran while the forward passes did


class ExperienceMaker:
    """Turns a step's prompts into this process's `Experience`.

    `module` is the trained policy-and-value module as accelerate prepared it; `reference` the
    frozen reference policy, or None with LoRA, where the reference is the policy itself with its
    adapters switched off. The KL controller and the running score moments are the trainer's
    (it updates and checkpoints them); this reads them.
    """

    def __init__(
        self,
        config: PPOConfig,
        *,
        accelerator: Accelerator,
        module: torch.nn.Module,
        reference: torch.nn.Module | None,
        tokenizer: PreTrainedTokenizerBase,
        scorer: BackgroundScorer,
        kl_controller: FixedKLController,
        score_moments: RunningMoments,
    ) -> None:
        self.config = config
        self.accelerator = accelerator
        self.module = module
        self.reference = reference
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.kl_controller = kl_controller
        self.score_moments = score_moments

    @property
    def policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.module).policy

    def make_experience(self, prompts: list[EncodedPrompt]) -> tuple[Experience, ExperienceTimes]:
        """Sample, score and shape one batch; raises the client's error (on every process) if
        any process's scoring failed."""
        started = time.perf_counter()
        generation = self.generate([prompt.input_ids for prompt in prompts])
        generated = time.perf_counter()

        # Scoring needs only text; the forward passes need no score: run them side by side.
        job = self.scorer.submit(
            [prompt.reward_prompt for prompt in prompts], generation.completions
        )
        logprobs, values, entropy, ref_logprobs = self._rollout_forward(generation)
        forwarded = time.perf_counter()
        raw_scores, scoring = self._collect_scores(job)

        experience = self._shape(
            generation, logprobs, ref_logprobs, values, entropy, raw_scores.to(logprobs.device)
        )
        times = ExperienceTimes(
            generate_s=generated - started,
            rollout_forward_s=forwarded - generated,
            score_s=scoring.score_s,
            score_wait_s=scoring.wait_s,
            score_overlap_s=scoring.overlap_s,
        )
        return experience, times

    def generate(self, prompt_ids: list[list[int]]) -> Generation:
        """One response per prompt from the policy as it is now, sampled as the config says."""
        config = self.config
        with self.accelerator.autocast():
            return generate_responses(
                self.policy,
                self.tokenizer,
                prompt_ids,
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
            )

    @torch.no_grad()
    def _rollout_forward(
        self, generation: Generation
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(policy log-probs, values, entropies, reference log-probs) of the responses."""
        config = self.config
        module = self.accelerator.unwrap_model(self.module)
        logprobs, values, entropy = [], [], []
        with self.accelerator.autocast():
            for start in range(0, len(generation.completions), config.rollout_forward_batch_size):
                part = generation.rows(slice(start, start + config.rollout_forward_batch_size))
                logits, part_values = module(
                    part.input_ids,
                    part.attention_mask,
                    part.response_ids.shape[1],
                    config.temperature,
                )
                logprobs.append(logprobs_from_logits(logits, part.response_ids))
                values.append(part_values)
                entropy.append(entropy_from_logits(logits))
        ref_logprobs = self.reference_logprobs(generation)
        return torch.cat(logprobs), torch.cat(values), torch.cat(entropy), ref_logprobs

    @torch.no_grad()
    def reference_logprobs(self, generation: Generation) -> torch.Tensor:
        """Log-probs of the responses under the frozen reference: the initial policy, or with
        LoRA the base model itself with its adapters switched off (no second copy)."""
        config = self.config
        lora = self.reference is None
        model = self.policy if lora else self.reference
        adapters_off = self.policy.disable_adapter() if lora else contextlib.nullcontext()
        with self.accelerator.autocast(), adapters_off:
            logprobs, _ = response_logprobs(
                model,
                generation,
                temperature=config.temperature,
                forward_batch_size=config.rollout_forward_batch_size,
            )
        return logprobs

    def _collect_scores(self, job: ScoringJob) -> tuple[torch.Tensor, ScoringTimes]:
        """The scores of this process's batch, once every process has its own; if any process's
        scoring failed, every process raises (none may go on to an update the others skip)."""
        error = None
        try:
            scores, times = job.result()
        except RewardClientError as failure:
            error, scores, times = failure, None, None
        failed = self.accelerator.reduce(
            torch.tensor([float(error is not None)], device=self.accelerator.device), "sum"
        )
        if error is not None:
            raise error
        if failed.item() > 0:
            raise Unavailable("another process of this run could not score its batch")
        return torch.tensor(scores, dtype=torch.float32), times

    def _shape(
        self,
        generation: Generation,
        logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        values: torch.Tensor,
        entropy: torch.Tensor,
        raw_scores: torch.Tensor,
    ) -> Experience:
        """Scores -> per-token rewards -> advantages and returns. All but the running score
        statistics, which see every process's scores, is pure: `ppo_math.shape_rewards`."""
        config = self.config
        mask = generation.response_mask
        ended, penalty = generation.ended_with_eos, config.missing_eos_penalty
        if config.score_scaling != "none":
            # The running statistics see every process's scores, so every process scales alike.
            penalised = shaped_scores(raw_scores, ended, missing_eos_penalty=penalty)
            self.score_moments.update(self.accelerator.gather(penalised))
        scores = shaped_scores(
            raw_scores,
            ended,
            missing_eos_penalty=penalty,
            scaling=config.score_scaling,
            moments=self.score_moments,
            clip=config.score_clip,
        )
        shaped = shape_rewards(
            scores,
            logprobs,
            ref_logprobs,
            values,
            mask,
            beta=self.kl_controller.beta,
            kl_estimator=config.kl_estimator,
            gamma=config.gamma,
            lam=config.lam,
            whiten_rewards=config.whiten_rewards,
            whiten_advantages=config.whiten_advantages,
        )
        return Experience(
            generation=generation,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            entropy=entropy,
            raw_scores=raw_scores,
            scores=scores,
            kl=shaped.kl,
            advantages=shaped.advantages,
            returns=shaped.returns,
        )
