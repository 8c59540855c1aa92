"""Every PPO hyperparameter in one place, with its default and where that default comes from.

Sources, abbreviated in the comments: "TRL" is the PPO trainer TRL shipped last (0.12-0.2x,
`PPOConfig` over `OnPolicyConfig`), "TRL classic" its earlier one (0.4-0.11), "N-impl" is Huang
et al. 2023, "The N Implementation Details of RLHF with PPO" (reproducing OpenAI's
lm-human-preferences), "Ziegler" is Ziegler et al. 2019. See ../shared/PPO_REFERENCE.md.

A config file (YAML or JSON) holds any subset of the fields; command-line flags override it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from policy_trainer.lora import LoraOptions
from reward_service.schemas import describe_validation_errors


class ConfigError(ValueError):
    """A config file or value that can't be used; the message says which and why."""


class PPOConfig(BaseModel):
    """PPO for a causal LM against a remote reward model. Batch sizes are per process: with
    `accelerate launch --num_processes K` each step trains on K * batch_size rollouts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- the run ---------------------------------------------------------------------------------
    steps: int = Field(100, ge=1, description="PPO steps (each: one rollout batch, then updates).")
    seed: int = Field(42, description="Seed; process k of a multi-process run uses seed + k.")
    checkpoint_every: int = Field(
        50,
        ge=0,
        description="Save a resumable checkpoint every this many steps (0: only at the end).",
    )
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    sample_every: int = Field(10, ge=1, description="Log sample completions every this many steps.")
    samples_per_log: int = Field(4, ge=0, description="How many completions each sample log holds.")
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, otherwise float32."
    )

    # --- generation ------------------------------------------------------------------------------
    max_new_tokens: int = Field(53, ge=1, description="Response length limit (TRL: 53).")
    temperature: float = Field(
        0.7,
        gt=0,
        description="Sampling temperature (TRL, N-impl: 0.7). Logits are divided by it in every "
        "log-prob too, or the KL grows too fast (N-impl).",
    )
    top_k: int = Field(0, ge=0, description="0 samples from the whole vocabulary (N-impl).")
    top_p: float = Field(1.0, gt=0, le=1, description="1.0: no nucleus truncation (N-impl).")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longer prompts keep their last this many tokens; None: no limit."
    )

    # --- batches ---------------------------------------------------------------------------------
    batch_size: int = Field(64, ge=1, description="Prompts per step per process (TRL example: 64).")
    num_mini_batches: int = Field(
        1, ge=1, description="Minibatches per PPO epoch (TRL: 1; one optimiser step each)."
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="Micro-batches per minibatch, accumulated before one optimiser step."
    )
    ppo_epochs: int = Field(4, ge=1, description="Passes over each rollout batch (TRL, N-impl: 4).")
    rollout_forward_batch_size: int = Field(
        64, ge=1, description="Rows per no-gradient forward pass of the rollout (TRL: 64)."
    )

    # --- optimisation ----------------------------------------------------------------------------
    learning_rate: float = Field(
        1e-5,
        gt=0,
        description="Adam learning rate (N-impl, TRL classic: 1e-5; TRL's example 3e-6).",
    )
    lr_schedule: Literal["linear", "constant"] = Field(
        "linear", description="linear: anneal to 0 over the run (N-impl, TRL); or constant."
    )
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon (N-impl: 1e-5, as OpenAI's).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (TRL: 0).")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm (TRL: 1.0); None: no clipping."
    )

    # --- the PPO objective -----------------------------------------------------------------------
    clip_range: float = Field(
        0.2, gt=0, description="Policy ratio clip epsilon (TRL, N-impl: 0.2)."
    )
    value_clip_range: float = Field(
        0.2, gt=0, description="How far a value may move from its rollout estimate (TRL: 0.2)."
    )
    vf_coef: float = Field(0.1, ge=0, description="Value loss weight (TRL, N-impl: 0.1).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount (TRL, N-impl: 1.0).")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda (TRL, N-impl: 0.95).")
    whiten_advantages: bool = Field(
        True, description="Whiten advantages over the batch (N-impl, TRL: always)."
    )
    whiten_rewards: bool = Field(
        False, description="Whiten per-token rewards, keeping their mean (TRL: off)."
    )

    # --- the KL penalty --------------------------------------------------------------------------
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1", description="k1: log p - log p_ref (TRL's default); k3: (r - 1) - log r."
    )
    kl_controller: Literal["fixed", "adaptive"] = Field(
        "fixed", description="fixed beta = kl_coef (TRL); adaptive: Ziegler's controller."
    )
    kl_coef: float = Field(0.05, ge=0, description="Fixed KL coefficient beta (TRL: 0.05).")
    kl_init: float = Field(0.2, gt=0, description="Adaptive: initial beta (TRL classic: 0.2).")
    kl_target: float = Field(6.0, gt=0, description="Adaptive: target KL in nats (TRL classic: 6).")
    kl_horizon: float = Field(10000, gt=0, description="Adaptive: horizon (TRL classic: 10000).")

    # --- scores ----------------------------------------------------------------------------------
    score_scaling: Literal["none", "std", "mean_std"] = Field(
        "none",
        description="Divide scores by the running std of all scores seen (std), also subtract "
        "the running mean (mean_std) (TRL classic use_score_scaling/use_score_norm: off).",
    )
    score_clip: float | None = Field(
        None, gt=0, description="Clip scores to [-c, c] after scaling (TRL classic: None)."
    )
    missing_eos_penalty: float | None = Field(
        None,
        ge=0,
        description="Subtract this from the score of a response that hit max_new_tokens without "
        "EOS (TRL: None, its example 1.0; lm-human-preferences: a fixed -1 score).",
    )

    # --- models ----------------------------------------------------------------------------------
    value_model: Literal["auto", "separate", "shared"] = Field(
        "auto",
        description="separate: a copy of the policy's trunk with a zero-initialised scalar head "
        "(TRL, N-impl); shared: the head sits on the policy's own trunk (no second trunk); "
        "auto: separate, but shared with LoRA, so that one copy of the base weights is held.",
    )
    lora: LoraOptions = Field(
        default_factory=LoraOptions,
        description="LoRA adapters on the policy (r=0: full fine-tuning). The reference is then "
        "the base model with its adapters disabled: no second copy of the weights.",
    )

    # --- the reward service ----------------------------------------------------------------------
    reward_model: str | None = Field(None, description="Served model name; None: the first.")
    reward_inputs: Literal["pairs", "text"] = Field(
        "pairs",
        description="pairs: send each prompt and completion, and the server's reward mapping "
        "joins them (template, tokenizer pair, or the completion alone); text: send prompt + "
        "completion as one text.",
    )
    reward_timeout_s: float = Field(60.0, gt=0, description="One scoring request, at most.")
    reward_max_wait_s: float = Field(
        600.0,
        gt=0,
        description="A batch's scoring, retries included, at most; past it the run saves a "
        "checkpoint and stops, to be resumed with --resume once the service is back.",
    )

    @model_validator(mode="after")
    def _batches_divide(self) -> PPOConfig:
        per_step = self.num_mini_batches * self.gradient_accumulation_steps
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of num_mini_batches * "
                f"gradient_accumulation_steps ({self.num_mini_batches} * "
                f"{self.gradient_accumulation_steps})"
            )
        return self

    @property
    def resolved_value_model(self) -> Literal["separate", "shared"]:
        if self.value_model == "auto":
            return "shared" if self.lora.enabled else "separate"
        return self.value_model

    @property
    def mini_batch_size(self) -> int:
        return self.batch_size // self.num_mini_batches

    @property
    def micro_batch_size(self) -> int:
        return self.mini_batch_size // self.gradient_accumulation_steps


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML (.yaml/.yml) or JSON file holding a mapping of PPOConfig fields."""
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(values).__name__}")
    return values


def build_config(file: Path | None = None, overrides: dict[str, Any] | None = None) -> PPOConfig:
    """Defaults, then the file's values, then `overrides` (command-line flags that were given)."""
    values = read_config_file(file) if file is not None else {}
    values.update(overrides or {})
    try:
        return PPOConfig(**values)
    except ValidationError as error:
        problems = describe_validation_errors(error.errors())
        source = f" in {file}" if file is not None else ""
        raise ConfigError(f"invalid PPO settings{source}: {problems}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A `--field-name` flag for every PPOConfig field (LoRA has its own `--lora-*` flags),
    each documented by the field; a flag given overrides the config file."""
    group = parser.add_argument_group("PPO settings (override --config; defaults in brackets)")
    for name, field in PPOConfig.model_fields.items():
        if name == "lora":
            continue
        kind, choices = _flag_type(field.annotation)
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} [{default}]".replace("%", "%%")
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            group.add_argument(
                flag,
                dest=name,
                type=kind,
                choices=choices,
                default=None,
                metavar=None if choices else name.upper(),
                help=help_text,
            )


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PPOConfig fields given on the command line."""
    overrides = {
        name: getattr(args, name)
        for name in PPOConfig.model_fields
        if name != "lora" and getattr(args, name, None) is not None
    }
    from policy_trainer.lora import lora_options_from_args

    lora = lora_options_from_args(args)
    if lora != LoraOptions():
        overrides["lora"] = lora
    return overrides


def _flag_type(annotation: Any) -> tuple[Callable[[str], Any], list[str] | None]:
    """The argparse type (and choices) of a field: int, float, bool, str or a Literal."""
    arguments = [argument for argument in get_args(annotation) if argument is not type(None)]
    if get_origin(annotation) is Literal:
        return str, [str(argument) for argument in arguments]
    if arguments:  # Optional[X]
        return _flag_type(arguments[0])
    return annotation, None
