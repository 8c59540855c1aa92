"""The PPO loop: generate, score remotely while computing log-probs and values, reward, GAE,
clipped updates; with checkpoints, metrics and multi-process data parallelism (accelerate).

One step, as `PPOTrainer.ppo_step` reads top to bottom:
1. take this process's share of the step's prompts; sample responses (temperature, EOS stop);
2. send them to the reward service in the background, and meanwhile compute, without gradient,
   the policy's log-probs, the reference's, and the values;
3. score -> per-token rewards (-beta * KL everywhere, the score on the last token) -> GAE ->
   whitened advantages (ppo_math);
4. `ppo_epochs` passes over shuffled minibatches of the clipped policy and value losses;
5. the KL controller sees the step's KL; the learning rate anneals.
Every process has its own rollouts (seed + process index); DDP averages their gradients.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from policy_trainer import checkpoint as checkpoints
from policy_trainer.config import PPOConfig
from policy_trainer.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    PolicyLossResult,
    RunningMoments,
    ValueLossResult,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    generalized_advantages,
    kl_per_token,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    per_token_rewards,
    shaped_scores,
)
from policy_trainer.prompts import EncodedPrompt, PromptRecord, PromptStream, encode_prompts
from policy_trainer.rollout import (
    BackgroundScorer,
    Generation,
    ScoreFunction,
    ScoringJob,
    ScoringTimes,
    generate_responses,
    response_logprobs,
)
from policy_trainer.run_log import RUN_INFO_FILENAME, RunLog

logger = logging.getLogger(__name__)

FINAL_POLICY_DIRNAME = "policy"


class TrainingStopped(RuntimeError):
    """The run stopped before its last step and saved a checkpoint to resume from; the message
    says why and what to do."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class Rollout:
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


class PPOTrainer:
    """PPO on a causal LM against a reward `score` function (normally `rollout.RemoteReward`).

    `run_dir` receives run.json, metrics, samples, the plot, checkpoints and, at the end, the
    trained policy as a Hugging Face folder (`run_dir/policy`). With `resume`, the latest
    checkpoint in `run_dir` is loaded and the run continues from it exactly.
    """

    def __init__(
        self,
        config: PPOConfig,
        *,
        policy_source: str | Path,
        prompts: Sequence[PromptRecord],
        score: ScoreFunction,
        run_dir: Path,
        resume: bool = False,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from policy_trainer.lora import apply_lora
        from policy_trainer.models import load_policy, resolve_policy_source
        from policy_trainer.value_model import build_policy_and_value

        self.config = config
        self.run_dir = Path(run_dir)
        # On a machine without CUDA, `accelerate launch --multi_gpu` processes talk over gloo.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=_mixed_precision(config.mixed_precision),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
        )
        self.rank = self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        if not resume and (self.run_dir / RUN_INFO_FILENAME).exists():
            raise FileExistsError(
                f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir}, "
                "or pick another output folder"
            )
        self.accelerator.wait_for_everyone()  # every process checked before any writes
        set_seed(config.seed + self.rank)  # each process its own rollouts
        self.run_log = RunLog(self.run_dir, enabled=self.is_main)

        folder = resolve_policy_source(policy_source)
        policy, self.tokenizer = load_policy(folder)
        if config.lora.enabled:
            # The reference is then the same model with its adapters disabled: one copy.
            policy = apply_lora(policy, config.lora)
            self.reference = None
        else:
            self.reference, _ = load_policy(folder)
            self.reference.requires_grad_(False)
            self.reference.to(self.accelerator.device)
        module = build_policy_and_value(policy, folder, config.resolved_value_model)
        module.eval()  # dropout off in every pass, the updates included (N-impl)
        optimizer = torch.optim.AdamW(
            [parameter for parameter in module.parameters() if parameter.requires_grad],
            lr=config.learning_rate,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        self.module, self.optimizer = self.accelerator.prepare(module, optimizer)
        # Stepped once per PPO step, on every process alike (so not handed to accelerate, which
        # would step it once per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, _lr_lambda(config)
        )
        self.kl_controller = (
            AdaptiveKLController(config.kl_init, config.kl_target, config.kl_horizon)
            if config.kl_controller == "adaptive"
            else FixedKLController(config.kl_coef)
        )
        self.score_moments = RunningMoments()
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + self.rank)

        self.prompts = encode_prompts(
            prompts, self.tokenizer, max_prompt_tokens=config.max_prompt_tokens
        )
        # Every process walks the same stream and takes its own share of each step's prompts.
        self.prompt_stream = PromptStream(len(self.prompts), seed=config.seed)
        self.scorer = BackgroundScorer(score)
        self.step = 0
        self.episodes = 0

        if resume:
            latest = checkpoints.latest_checkpoint(self.run_dir)
            if latest is None:
                raise FileNotFoundError(f"{self.run_dir} has no complete checkpoint to resume from")
            self.load_checkpoint(latest)
        elif run_info is not None:
            self.run_log.write_run_info(run_info)
        self.accelerator.wait_for_everyone()

    # --- the loop ---------------------------------------------------------------------------------

    @property
    def policy(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.module).policy

    def train(self) -> Path:
        """Runs the remaining steps; returns the folder of the trained policy. Raises
        TrainingStopped (after saving a checkpoint) if the reward service fails for longer than
        `reward_max_wait_s` or refuses a batch."""
        from tqdm.auto import tqdm

        from reward_service.client import RewardClientError

        config = self.config
        progress = tqdm(
            total=config.steps,
            initial=self.step,
            desc="PPO",
            unit="step",
            disable=not self.is_main,
            dynamic_ncols=True,
        )
        try:
            while self.step < config.steps:
                # Taken before the step draws any randomness: if scoring fails, the checkpoint
                # must replay this step exactly.
                resume_point = self._resume_point()
                try:
                    metrics = self.ppo_step(self.step + 1)
                except RewardClientError as error:
                    raise self._stop_on_reward_failure(resume_point, error) from error
                self.step += 1
                self.run_log.log_step(metrics)
                progress.update(1)
                progress.set_postfix(
                    score=f"{metrics['score_mean']:.3f}", kl=f"{metrics['kl']:.3f}"
                )
                if self.step % 10 == 0 or self.step == config.steps:
                    self.run_log.plot()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint(self._resume_point())
            if checkpoints.latest_checkpoint(self.run_dir) != checkpoints.checkpoint_path(
                self.run_dir, self.step
            ):
                self.save_checkpoint(self._resume_point())
            return self.save_policy()
        finally:
            progress.close()
            self.scorer.close()

    def ppo_step(self, step: int) -> dict[str, Any]:
        """One PPO step; returns its metrics (over every process)."""
        config = self.config
        started = time.perf_counter()
        prompts = self._take_prompts()

        generation = self._generate([prompt.input_ids for prompt in prompts])
        generated = time.perf_counter()

        # Scoring needs only text; the forward passes need no score: run them side by side.
        job = self.scorer.submit(
            [prompt.reward_prompt for prompt in prompts], generation.completions
        )
        logprobs, values, entropy, ref_logprobs = self._rollout_forward(generation)
        forwarded = time.perf_counter()
        raw_scores, scoring_times = self._collect_scores(job)

        rollout = self._make_rollout(
            generation, logprobs, ref_logprobs, values, entropy, raw_scores.to(logprobs.device)
        )
        beta = self.kl_controller.beta
        scored = time.perf_counter()

        update_stats = self._update(rollout)
        trained = time.perf_counter()

        metrics = self._step_metrics(step, rollout, update_stats, beta)
        self.kl_controller.update(metrics["kl"], n_steps=metrics["batch_size"])
        self.scheduler.step()
        metrics.update(
            generate_s=generated - started,
            rollout_forward_s=forwarded - generated,
            score_s=scoring_times.score_s,
            score_wait_s=scoring_times.wait_s,
            score_overlap_s=scoring_times.overlap_s,
            train_s=trained - scored,
            step_s=time.perf_counter() - started,
        )
        if config.samples_per_log and step % config.sample_every == 0:
            self._log_samples(step, prompts, rollout)
        return metrics

    # --- rollout ----------------------------------------------------------------------------------

    def _take_prompts(self) -> list[EncodedPrompt]:
        share = self.config.batch_size
        indices = self.prompt_stream.take(share * self.accelerator.num_processes)
        mine = indices[self.rank * share : (self.rank + 1) * share]
        return [self.prompts[index] for index in mine]

    def _generate(self, prompt_ids: list[list[int]]) -> Generation:
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
        with self.accelerator.autocast():
            if self.reference is None:
                with self.policy.disable_adapter():
                    logprobs, _ = response_logprobs(
                        self.policy,
                        generation,
                        temperature=config.temperature,
                        forward_batch_size=config.rollout_forward_batch_size,
                    )
                return logprobs
            logprobs, _ = response_logprobs(
                self.reference,
                generation,
                temperature=config.temperature,
                forward_batch_size=config.rollout_forward_batch_size,
            )
            return logprobs

    def _collect_scores(self, job: ScoringJob) -> tuple[torch.Tensor, ScoringTimes]:
        """The scores of this process's batch, once every process has its own; if any process's
        scoring failed, every process raises (none may go on to an update the others skip)."""
        from reward_service.client import RewardClientError, Unavailable

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

    def _make_rollout(
        self,
        generation: Generation,
        logprobs: torch.Tensor,
        ref_logprobs: torch.Tensor,
        values: torch.Tensor,
        entropy: torch.Tensor,
        raw_scores: torch.Tensor,
    ) -> Rollout:
        """Scores -> per-token rewards -> advantages and returns (ppo_math, N-impl order)."""
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
        kl = kl_per_token(logprobs, ref_logprobs, config.kl_estimator) * mask
        rewards = per_token_rewards(scores, kl, mask, self.kl_controller.beta)
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = generalized_advantages(
            rewards, values, mask, config.gamma, config.lam
        )
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Rollout(
            generation=generation,
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
            values=values,
            entropy=entropy,
            raw_scores=raw_scores,
            scores=scores,
            kl=kl,
            advantages=advantages,
            returns=returns,
        )

    # --- the updates ------------------------------------------------------------------------------

    def _update(self, rollout: Rollout) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled minibatches; one optimiser step per minibatch,
        accumulated over its micro-batches. Returns the mean of each loss statistic."""
        config = self.config
        statistics: list[dict[str, float]] = []
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(rollout.scores), generator=self.shuffle_generator)
            for minibatch in order.split(config.mini_batch_size):
                for rows in minibatch.split(config.micro_batch_size):
                    with self.accelerator.accumulate(self.module):
                        policy, value = self._losses(rollout, rows)
                        self.accelerator.backward(policy.loss + config.vf_coef * value.loss)
                        if self.accelerator.sync_gradients and config.max_grad_norm is not None:
                            parameters = self.module.parameters()
                            self.accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
                        self.optimizer.step()
                        self.optimizer.zero_grad()
                    statistics.append({
                        "policy_loss": policy.loss, "policy_clip_fraction": policy.clip_fraction,
                        "approx_kl": policy.approx_kl, "value_loss": value.loss,
                        "value_clip_fraction": value.clip_fraction,
                    })  # fmt: skip
        return {
            name: sum(float(entry[name].detach()) for entry in statistics) / len(statistics)
            for name in statistics[0]
        }

    def _losses(
        self, rollout: Rollout, rows: torch.Tensor
    ) -> tuple[PolicyLossResult, ValueLossResult]:
        """The clipped policy and value losses of some of the rollout's rows, under the model as
        it is now (with gradient)."""
        config = self.config
        part = rollout.generation.rows(rows)
        logits, values = self.module(
            part.input_ids, part.attention_mask, part.response_ids.shape[1], config.temperature
        )
        logprobs = logprobs_from_logits(logits, part.response_ids)
        mask = part.response_mask
        policy = clipped_policy_loss(
            logprobs, rollout.logprobs[rows], rollout.advantages[rows], mask, config.clip_range
        )
        value = clipped_value_loss(
            values, rollout.values[rows], rollout.returns[rows], mask, config.value_clip_range
        )
        return policy, value

    # --- metrics ----------------------------------------------------------------------------------

    def _step_metrics(
        self, step: int, rollout: Rollout, update_stats: dict[str, float], beta: float
    ) -> dict[str, Any]:
        gather = self.accelerator.gather
        mask = rollout.generation.response_mask
        scores = gather(rollout.raw_scores)
        sequence_kl = gather(rollout.kl.sum(dim=1))
        lengths = gather(rollout.generation.response_lengths)
        ended = gather(rollout.generation.ended_with_eos.float())
        self.episodes += len(scores)
        local = {
            **update_stats,
            "entropy": float(masked_mean(rollout.entropy, mask)),
            "explained_variance": explained_variance(rollout.values, rollout.returns, mask),
        }
        averaged = self.accelerator.reduce(
            torch.tensor(list(local.values()), device=self.accelerator.device), "mean"
        ).tolist()
        return {
            "step": step,
            "episodes": self.episodes,
            "batch_size": len(scores),
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()) if len(scores) > 1 else 0.0,
            "kl": float(sequence_kl.mean()),
            "beta": beta,
            **dict(zip(local, averaged, strict=True)),
            "response_length": float(lengths.float().mean()),
            "eos_fraction": float(ended.mean()),
            "learning_rate": self.scheduler.get_last_lr()[0],
        }

    def _log_samples(self, step: int, prompts: list[EncodedPrompt], rollout: Rollout) -> None:
        completions = rollout.generation.completions
        scores = rollout.raw_scores.tolist()
        self.run_log.log_samples(step, [
            {"prompt": prompt.reward_prompt, "completion": completion, "score": score}
            for prompt, completion, score in zip(prompts, completions, scores, strict=True)
        ][: self.config.samples_per_log])  # fmt: skip

    # --- checkpoints and the final policy ---------------------------------------------------------

    def _resume_point(self) -> dict[str, Any]:
        return {
            "rng": checkpoints.capture_rng_state(self.shuffle_generator),
            "prompt_position": self.prompt_stream.position,
        }

    def save_checkpoint(self, resume_point: dict[str, Any]) -> Path:
        """Checkpoint the completed steps; `resume_point` is the random state and prompt position
        the next step starts from."""
        accelerator = self.accelerator
        if self.is_main:
            checkpoints.begin_checkpoint(self.run_dir, self.step)
        accelerator.wait_for_everyone()
        folder = checkpoints.partial_path(self.run_dir, self.step)
        torch.save(resume_point["rng"], checkpoints.rng_path(folder, self.rank))
        if self.is_main:
            torch.save(
                {
                    "model": checkpoints.trainable_state(accelerator.unwrap_model(self.module)),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "kl_controller": self.kl_controller.state_dict(),
                    "score_moments": self.score_moments.state_dict(),
                    "step": self.step,
                    "episodes": self.episodes,
                    "prompt_position": resume_point["prompt_position"],
                    "num_processes": accelerator.num_processes,
                },
                folder / checkpoints.STATE_FILENAME,
            )
        accelerator.wait_for_everyone()
        if self.is_main:
            checkpoints.finish_checkpoint(self.run_dir, self.step, self.config.keep_checkpoints)
        accelerator.wait_for_everyone()
        return checkpoints.checkpoint_path(self.run_dir, self.step)

    def load_checkpoint(self, folder: Path) -> None:
        state = checkpoints.load_state(folder)
        if state["num_processes"] != self.accelerator.num_processes:
            raise ValueError(
                f"{folder} was saved by a run of {state['num_processes']} processes; resume it "
                f"with the same number (this one has {self.accelerator.num_processes})"
            )
        checkpoints.load_trainable_state(self.accelerator.unwrap_model(self.module), state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_moments.load_state_dict(state["score_moments"])
        self.step = state["step"]
        self.episodes = state["episodes"]
        self.prompt_stream.position = state["prompt_position"]
        checkpoints.restore_rng_state(
            checkpoints.load_rng_state(folder, self.rank), self.shuffle_generator
        )
        self.run_log.truncate_after(self.step)
        logger.info("resumed from %s (step %d)", folder, self.step)

    def _stop_on_reward_failure(self, resume_point: dict[str, Any], error: Exception) -> Exception:
        from reward_service.client import DeadlineExceeded, Unavailable

        folder = self.save_checkpoint(resume_point)
        if isinstance(error, DeadlineExceeded | Unavailable):
            cause = (
                f"the reward service did not score step {self.step + 1} within "
                f"reward_max_wait_s = {self.config.reward_max_wait_s:g} s ({error})"
            )
            action = "Once it answers again (check its /health/ready), continue with"
        else:
            cause = f"the reward service refused step {self.step + 1}'s batch ({error})"
            action = "Fix that, then continue with"
        return TrainingStopped(
            f"{cause}. The {self.step} completed steps are saved in {folder}. {action}: "
            f"policy-trainer ppo --resume {self.run_dir} (add --reward-url URL if it moved)",
            folder,
        )

    def save_policy(self) -> Path:
        """The trained policy as a plain Hugging Face folder. With LoRA the adapters are merged
        into the weights, in place: the trainer is done with them."""
        from policy_trainer.lora import merge_lora

        out = self.run_dir / FINAL_POLICY_DIRNAME
        self.accelerator.wait_for_everyone()
        if self.is_main:
            model = merge_lora(self.policy)
            model.save_pretrained(out, safe_serialization=True)
            self.tokenizer.save_pretrained(out)
            self.run_log.plot()
        self.accelerator.wait_for_everyone()
        return out


def _mixed_precision(setting: str) -> str:
    if setting == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if bf16 else "no"
    return setting


def _lr_lambda(config: PPOConfig):
    """Learning-rate factor after `done` steps: linear from 1 to 0 over the run (N-impl), or 1."""
    if config.lr_schedule == "constant":
        return lambda done: 1.0
    return lambda done: max(0.0, 1.0 - done / config.steps)
