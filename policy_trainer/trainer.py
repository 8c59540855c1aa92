"""The PPO loop: experience, clipped updates, the KL controller; with checkpoints, metrics and
multi-process data parallelism (accelerate).

One step, as `PPOTrainer.ppo_step` reads top to bottom:
1. take this process's share of the step's prompts;
2. make their experience (`experience.ExperienceMaker`): sample responses, score them remotely
   while computing log-probs and values, per-token rewards, GAE, whitened advantages;
3. `ppo_epochs` passes over shuffled minibatches of the clipped policy and value losses;
4. the KL controller sees the step's KL; the learning rate anneals.
Every process has its own rollouts (seed + process index); DDP averages their gradients.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from transformers import get_scheduler

from policy_trainer import checkpoint as checkpoints
from policy_trainer.config import ConfigError, PPOConfig
from policy_trainer.experience import Experience, ExperienceMaker
from policy_trainer.lora import apply_lora, merge_lora
from policy_trainer.models import load_policy, resolve_policy_source
from policy_trainer.ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    PolicyLossResult,
    RunningMoments,
    ValueLossResult,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
    logprobs_from_logits,
    masked_mean,
)
from policy_trainer.prompts import EncodedPrompt, PromptRecord, PromptStream, encode_prompts
from policy_trainer.rollout import BackgroundScorer, ScoreFunction
from policy_trainer.run_log import RUN_INFO_FILENAME, RunLog
from policy_trainer.value_model import build_policy_and_value
from reward_service.client import (
    DeadlineExceeded,
    NonFiniteReward,
    RewardClientError,
    Unavailable,
)

logger = logging.getLogger(__name__)

FINAL_POLICY_DIRNAME = "policy"
# --report-to: the trackers' project (wandb, trackio) and, under the run folder, where the
# tensorboard event files go (RUN_DIR/logs/policy-trainer/).
TRACKER_PROJECT = "policy-trainer"
TRACKER_LOGS_DIRNAME = "logs"


class TrainingStopped(RuntimeError):
    """The run stopped before its last step and saved a checkpoint to resume from; the message
    says why and what to do."""

    def __init__(self, message: str, checkpoint: Path) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


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
        from accelerate.utils import ProjectConfiguration, set_seed

        self.config = config
        self.run_dir = Path(run_dir)
        check_tracker_installed(config.report_to)
        # On a machine without CUDA, `accelerate launch --multi_gpu` processes talk over gloo.
        # Gradient accumulation is `_update`'s own, weighted by tokens, not accelerate's.
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),
            mixed_precision=_mixed_precision(config.mixed_precision),
            log_with=None if config.report_to == "none" else config.report_to,
            project_config=ProjectConfiguration(
                project_dir=str(self.run_dir),
                logging_dir=str(self.run_dir / TRACKER_LOGS_DIRNAME),
            ),
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
        self.scheduler = get_scheduler(
            _scheduler_name(config),
            self.optimizer.optimizer,
            num_warmup_steps=config.warmup_step_count,
            num_training_steps=config.steps,
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
        self.experience_maker = ExperienceMaker(
            config,
            accelerator=self.accelerator,
            module=self.module,
            reference=self.reference,
            tokenizer=self.tokenizer,
            scorer=self.scorer,
            kl_controller=self.kl_controller,
            score_moments=self.score_moments,
        )
        self.step = 0
        self.episodes = 0
        # The step of the last checkpoint this run saved or resumed from (not merely the newest
        # folder: a newer one that did not load may still be there until its step is saved again).
        self.checkpointed_step: int | None = None

        if resume:
            loaded = checkpoints.load_newest_checkpoint(
                self.run_dir, self.rank, self.accelerator.num_processes
            )
            if loaded is None:
                raise FileNotFoundError(
                    f"{self.run_dir} has no checkpoint that loads to resume from"
                )
            self.restore_checkpoint(loaded)
        elif run_info is not None:
            self.run_log.write_run_info(run_info)
        if config.report_to != "none":
            self.accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(config))
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
                self.accelerator.log(tracker_metrics(metrics), step=self.step)  # main process
                progress.update(1)
                progress.set_postfix(
                    score=f"{metrics['score_mean']:.3f}", kl=f"{metrics['kl']:.3f}"
                )
                if self.step % 10 == 0 or self.step == config.steps:
                    self.run_log.plot()
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint(self._resume_point())
            if self.checkpointed_step != self.step:
                self.save_checkpoint(self._resume_point())
            return self.save_policy()
        finally:
            progress.close()
            self.scorer.close()
            self.accelerator.end_training()  # flushes and closes the trackers

    def ppo_step(self, step: int) -> dict[str, Any]:
        """One PPO step; returns its metrics (over every process)."""
        config = self.config
        started = time.perf_counter()
        prompts = self._take_prompts()
        experience, times = self.experience_maker.make_experience(prompts)
        beta = self.kl_controller.beta
        scored = time.perf_counter()

        update_stats = self._update(experience)
        trained = time.perf_counter()

        metrics = self._step_metrics(step, experience, update_stats, beta)
        self.kl_controller.update(metrics["kl"], n_steps=metrics["batch_size"])
        self.scheduler.step()
        metrics.update(
            **asdict(times), train_s=trained - scored, step_s=time.perf_counter() - started
        )
        if config.samples_per_log and step % config.sample_every == 0:
            self._log_samples(step, prompts, experience)
        return metrics

    def _take_prompts(self) -> list[EncodedPrompt]:
        share = self.config.batch_size
        indices = self.prompt_stream.take(share * self.accelerator.num_processes)
        mine = indices[self.rank * share : (self.rank + 1) * share]
        return [self.prompts[index] for index in mine]

    # --- the updates ------------------------------------------------------------------------------

    def _update(self, experience: Experience) -> dict[str, float]:
        """`ppo_epochs` passes over shuffled minibatches; one optimiser step per minibatch, its
        gradient accumulated over its micro-batches as that of the minibatch's token mean.
        Returns the mean of each loss statistic."""
        config = self.config
        mask = experience.generation.response_mask
        statistics: list[dict[str, float]] = []
        for _ in range(config.ppo_epochs):
            order = torch.randperm(len(experience.scores), generator=self.shuffle_generator)
            for minibatch in order.split(config.mini_batch_size):
                micro_batches = minibatch.split(config.micro_batch_size)
                minibatch_tokens = mask[minibatch].sum()
                for index, rows in enumerate(micro_batches):
                    last = index == len(micro_batches) - 1
                    # DDP averages the gradients over processes once, with the last micro-batch.
                    syncing = contextlib.nullcontext if last else self.accelerator.no_sync
                    with syncing(self.module):
                        policy, value = self._losses(experience, rows)
                        loss = policy.loss + config.vf_coef * value.loss
                        # A micro-batch's token mean, weighted by its share of the minibatch's
                        # tokens: the sum is the minibatch's token mean, as one pass would give.
                        self.accelerator.backward(loss * mask[rows].sum() / minibatch_tokens)
                    statistics.append(
                        {
                            "policy_loss": policy.loss,
                            "policy_clip_fraction": policy.clip_fraction,
                            "approx_kl": policy.approx_kl,
                            "value_loss": value.loss,
                            "value_clip_fraction": value.clip_fraction,
                        }
                    )
                if config.max_grad_norm is not None:
                    self.accelerator.clip_grad_norm_(self.module.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
        return {
            name: sum(float(entry[name].detach()) for entry in statistics) / len(statistics)
            for name in statistics[0]
        }

    def _losses(
        self, experience: Experience, rows: torch.Tensor
    ) -> tuple[PolicyLossResult, ValueLossResult]:
        """The clipped policy and value losses of some of the experience's rows, under the model as
        it is now (with gradient)."""
        config = self.config
        part = experience.generation.rows(rows)
        logits, values = self.module(
            part.input_ids, part.attention_mask, part.response_ids.shape[1], config.temperature
        )
        logprobs = logprobs_from_logits(logits, part.response_ids)
        mask = part.response_mask
        policy = clipped_policy_loss(
            logprobs,
            experience.logprobs[rows],
            experience.advantages[rows],
            mask,
            config.clip_range,
        )
        value = clipped_value_loss(
            values, experience.values[rows], experience.returns[rows], mask, config.value_clip_range
        )
        return policy, value

    # --- metrics ----------------------------------------------------------------------------------

    def _step_metrics(
        self, step: int, experience: Experience, update_stats: dict[str, float], beta: float
    ) -> dict[str, Any]:
        gather = self.accelerator.gather
        mask = experience.generation.response_mask
        scores = gather(experience.raw_scores)
        sequence_kl = gather(experience.kl.sum(dim=1))
        lengths = gather(experience.generation.response_lengths)
        ended = gather(experience.generation.ended_with_eos.float())
        self.episodes += len(scores)
        local = {
            **update_stats,
            "entropy": float(masked_mean(experience.entropy, mask)),
            "explained_variance": explained_variance(experience.values, experience.returns, mask),
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

    def _log_samples(self, step: int, prompts: list[EncodedPrompt], experience: Experience) -> None:
        completions = experience.generation.completions
        scores = experience.raw_scores.tolist()
        samples = [
            {"prompt": prompt.reward_prompt, "completion": completion, "score": score}
            for prompt, completion, score in zip(prompts, completions, scores, strict=True)
        ]
        self.run_log.log_samples(step, samples[: self.config.samples_per_log])

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
        self.checkpointed_step = self.step
        return checkpoints.checkpoint_path(self.run_dir, self.step)

    def restore_checkpoint(self, loaded: checkpoints.LoadedCheckpoint) -> None:
        state = loaded.state
        checkpoints.load_trainable_state(self.accelerator.unwrap_model(self.module), state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_moments.load_state_dict(state["score_moments"])
        self.step = self.checkpointed_step = state["step"]
        self.episodes = state["episodes"]
        self.prompt_stream.position = state["prompt_position"]
        checkpoints.restore_rng_state(loaded.rng_state, self.shuffle_generator)
        self.run_log.truncate_after(self.step)
        logger.info("resumed from %s (step %d)", loaded.folder, self.step)

    def _stop_on_reward_failure(self, resume_point: dict[str, Any], error: Exception) -> Exception:
        folder = self.save_checkpoint(resume_point)
        if isinstance(error, DeadlineExceeded | Unavailable):
            cause = (
                f"the reward service did not score step {self.step + 1} within "
                f"reward_max_wait_s = {self.config.reward_max_wait_s:g} s ({error})"
            )
            action = "Once it answers again (check its /health/ready), continue with"
        elif isinstance(error, NonFiniteReward):
            # Stopped before the score statistics or any parameter saw it: the checkpoint is clean.
            cause = f"a non-finite reward in step {self.step + 1}'s batch ({error})"
            action = "Fix the reward model (or serve it in float32), then continue with"
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


def check_tracker_installed(report_to: str) -> None:
    """ConfigError where --report-to names a tracker whose package is missing (accelerate would
    leave it out without a word)."""
    from accelerate.tracking import get_available_trackers

    available = {str(tracker.value) for tracker in get_available_trackers()}
    if report_to != "none" and report_to not in available:
        raise ConfigError(
            f"--report-to {report_to}: the {report_to} package is not installed "
            f"(pip install {report_to})"
        )


def tracker_config(config: PPOConfig) -> dict[str, Any]:
    """The settings as trackers take hyperparameters: flat (lora.r -> lora_r), and None as
    text (tensorboard's hparams take numbers, text and booleans only)."""
    flat: dict[str, Any] = {}
    for name, value in config.model_dump(mode="json").items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for inner, item in items:
            key = name if inner is None else f"{name}_{inner}"
            flat[key] = item if isinstance(item, int | float | str | bool) else str(item)
    return flat


def tracker_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A step's numeric metrics (the step number itself goes as the tracker's step)."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and name != "step"
    }


def _scheduler_name(config: PPOConfig) -> str:
    """transformers' name for the schedule: its "constant" would ignore a warm-up."""
    return "constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule
