"""Every setting of every `policy-trainer` command, with its default and where that default comes
from; and the one way settings become command-line flags and are validated.

Sources of the PPO defaults, abbreviated in the comments:
- "N-impl": Huang et al. 2023, "The N Implementation Details of RLHF with PPO" (Hugging Face blog),
  which reproduces OpenAI's lm-human-preferences (Ziegler et al. 2019) detail by detail;
- "Ziegler": Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", whose
  adaptive KL controller this offers;
- "TRL": the PPO trainer Hugging Face TRL shipped last (0.12 to 0.2x, `PPOConfig` over
  `OnPolicyConfig`), "TRL classic" its earlier one (0.4 to 0.11); TRL 1.x has no PPO trainer.
The objective itself is PPO's clipped surrogate (Schulman et al. 2017, "Proximal Policy
Optimization Algorithms") with GAE (Schulman et al. 2016, "High-Dimensional Continuous Control
Using Generalized Advantage Estimation").

A settings model's fields are its command's flags (`add_settings_arguments`): `--field-name`,
documented by the field, its default in brackets; a nested settings model (LoRA) is a group of
its own, its flags prefixed with the field's name. `build_settings` validates what was given, and
every command reports a refused value the same way. A PPO config file (YAML or JSON) holds any
subset of PPOConfig's fields, by our names or TRL's (`from_trl_names`, docs/ppo.md); command-line
flags override it.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from reward_service.errors import describe_validation_errors
from reward_service.flags import Flag, settings_overrides

Settings = TypeVar("Settings", bound=BaseModel)

# peft's shorthand for every linear layer but the output head: in a Llama block the attention
# projections (q, k, v, o) and the MLP (gate, up, down).
ALL_LINEAR = "all-linear"


class ConfigError(ValueError):
    """A config file or value that can't be used; the message says which and why."""


class LoraOptions(BaseModel):
    """LoRA adapters (peft) for SFT and PPO; ``r == 0`` means no LoRA (full fine-tuning)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="LoRA adapters")

    r: int = Field(0, ge=0, description="LoRA rank; 0 trains every weight instead.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling: updates are scaled by alpha / r.")
    # No dropout by default: PPO compares log-probs of the same tokens under the rollout and the
    # update passes, and dropout would make them differ for no reason.
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: Annotated[list[str] | str, Flag(metavar="NAME")] = Field(
        ALL_LINEAR,
        description="Module names to adapt, e.g. q_proj v_proj; all-linear: every linear layer "
        "of attention and MLP, not the output head.",
    )

    @field_validator("target_modules")
    @classmethod
    def _all_linear_is_a_shorthand(cls, value: list[str] | str) -> list[str] | str:
        # peft takes "all-linear" as a word of its own, not as one module name among others.
        return ALL_LINEAR if value == [ALL_LINEAR] else value

    @property
    def enabled(self) -> bool:
        return self.r > 0


# --- TRL's names -------------------------------------------------------------------------------
# PPOConfig takes TRL's PPOConfig (0.12 to 0.2x, over OnPolicyConfig and TrainingArguments) key
# names too. Where the meaning is the same, the field has TRL's name as an alias (AliasChoices
# above, which are flags too: --cliprange); these below need more than a new name. The table is
# in docs/ppo.md.

# TRL's keys that have no counterpart here, or whose meaning differs: why, and what to give.
TRL_KEYS_REFUSED = {
    "total_episodes": "TRL counts episodes over all processes; give steps (total_episodes / "
    "(batch_size * processes))",
    "num_train_epochs": "runs are counted in PPO steps here; give steps",
    "num_sample_generations": "TRL spreads that many sample logs over the run; give "
    "sample_every (steps between sample logs) and samples_per_log",
    "stop_token": "responses stop at the policy's EOS token, always",
    "stop_token_id": "responses stop at the policy's EOS token, always",
    "fp16": "float16 is not offered: mixed_precision takes auto, no or bf16",
    "model_name_or_path": "give the policy as --policy",
    "sft_model_path": "give the policy as --policy",
    "reward_model_path": "the reward model is served: give --reward-url (and reward_model)",
    "output_dir": "give the run folder as --output-dir",
    "per_device_eval_batch_size": "there is no evaluation during PPO here",
}


def from_trl_names(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with TRL's keys that need translating translated; a ValueError (which
    build_settings words as a ConfigError) for a TRL key with no counterpart. Aliases of one
    meaning (cliprange...) are left to the fields."""
    refused = sorted(key for key in values if key in TRL_KEYS_REFUSED)
    if refused:
        raise ValueError(
            "; ".join(f"TRL's {key} is not taken: {TRL_KEYS_REFUSED[key]}" for key in refused)
        )
    values = dict(values)
    if "per_device_train_batch_size" in values:
        # TRL's per_device_train_batch_size is a micro-batch; its rollout batch per process
        # (local_batch_size) is that times gradient_accumulation_steps times num_mini_batches.
        if "batch_size" in values:
            raise ValueError("give batch_size or TRL's per_device_train_batch_size, not both")
        micro = values.pop("per_device_train_batch_size")
        accumulation = values.get("gradient_accumulation_steps", 1)
        mini_batches = values.get("num_mini_batches", 1)
        if all(isinstance(n, int) for n in (micro, accumulation, mini_batches)):
            values["batch_size"] = micro * accumulation * mini_batches
        else:
            values["batch_size"] = micro  # refused below by the field, with its own message
    if "bf16" in values:
        if "mixed_precision" in values:
            raise ValueError("give mixed_precision or TRL's bf16, not both")
        bf16 = values.pop("bf16")
        values["mixed_precision"] = "bf16" if bf16 is True else "no" if bf16 is False else bf16
    return values


class PPOConfig(BaseModel):
    """PPO for a causal LM against a remote reward model. Batch sizes are per process: with
    `accelerate launch --num_processes K` each step trains on K * batch_size rollouts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, title="PPO settings")

    @model_validator(mode="before")
    @classmethod
    def _trl_names(cls, values: Any) -> Any:
        return from_trl_names(values) if isinstance(values, dict) else values

    # --- the run ---------------------------------------------------------------------------------
    steps: int = Field(100, ge=1, description="PPO steps (each: one rollout batch, then updates).")
    seed: int = Field(42, description="Seed; process k of a multi-process run uses seed + k.")
    checkpoint_every: int = Field(
        50,
        ge=0,
        validation_alias=AliasChoices("checkpoint_every", "save_steps"),
        description="Save a resumable checkpoint every this many steps (0: only at the end).",
    )
    keep_checkpoints: int = Field(
        2,
        ge=1,
        validation_alias=AliasChoices("keep_checkpoints", "save_total_limit"),
        description="How many recent checkpoints to keep.",
    )
    sample_every: int = Field(10, ge=1, description="Log sample completions every this many steps.")
    samples_per_log: int = Field(4, ge=0, description="How many completions each sample log holds.")
    mixed_precision: Literal["auto", "no", "bf16"] = Field(
        "auto", description="auto: bf16 on a GPU that supports it, otherwise float32."
    )
    report_to: Literal["none", "tensorboard", "wandb", "trackio"] = Field(
        "none",
        description="Also log each step's metrics there, through accelerate's trackers "
        "(tensorboard: event files under RUN_DIR/logs; wandb offline with WANDB_MODE=offline; "
        "trackio: a local database). metrics.jsonl is written either way.",
    )

    # --- generation ------------------------------------------------------------------------------
    max_new_tokens: int = Field(
        53,
        ge=1,
        validation_alias=AliasChoices("max_new_tokens", "response_length"),
        description="Response length limit (TRL: 53).",
    )
    temperature: float = Field(
        0.7,
        gt=0,
        description="Sampling temperature (TRL, N-impl: 0.7). Logits are divided by it in every "
        "log-prob too, or the KL grows too fast (N-impl).",
    )
    top_k: int = Field(
        0,
        ge=0,
        description="Must stay 0: every token is sampled from the whole softmax(logits / "
        "temperature) (N-impl), the distribution of PPO's log-probs; top-k is refused.",
    )
    top_p: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Must stay 1.0: no nucleus truncation (N-impl), for the same reason as top_k.",
    )
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
    ppo_epochs: int = Field(
        4,
        ge=1,
        validation_alias=AliasChoices("ppo_epochs", "num_ppo_epochs"),
        description="Passes over each rollout batch (TRL, N-impl: 4).",
    )
    rollout_forward_batch_size: int = Field(
        64,
        ge=1,
        validation_alias=AliasChoices(
            "rollout_forward_batch_size", "local_rollout_forward_batch_size"
        ),
        description="Rows per no-gradient forward pass of the rollout (TRL: 64).",
    )

    # --- optimisation ----------------------------------------------------------------------------
    learning_rate: float = Field(
        1e-5,
        gt=0,
        description="Adam learning rate (N-impl, TRL classic: 1e-5; TRL's example 3e-6).",
    )
    lr_schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear",
        validation_alias=AliasChoices("lr_schedule", "lr_scheduler_type"),
        description="After the warm-up: linear: anneal to 0 over the run (N-impl, TRL); cosine: "
        "half a cosine down to 0; constant (constant_with_warmup: the same). As "
        "transformers.get_scheduler makes them.",
    )
    warmup_steps: int = Field(
        0, ge=0, description="Steps over which the learning rate rises from 0 (TRL: 0)."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="The warm-up as a share of the steps, instead of warmup_steps."
    )
    adam_eps: float = Field(
        1e-5,
        gt=0,
        validation_alias=AliasChoices("adam_eps", "adam_epsilon"),
        description="Adam epsilon (N-impl: 1e-5, as OpenAI's).",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (TRL: 0).")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="Clip the global gradient norm (TRL: 1.0); None: no clipping."
    )

    # --- the PPO objective -----------------------------------------------------------------------
    clip_range: float = Field(
        0.2,
        gt=0,
        validation_alias=AliasChoices("clip_range", "cliprange"),
        description="Policy ratio clip epsilon (TRL, N-impl: 0.2).",
    )
    value_clip_range: float = Field(
        0.2,
        gt=0,
        validation_alias=AliasChoices("value_clip_range", "cliprange_value"),
        description="How far a value may move from its rollout estimate (TRL: 0.2).",
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

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_tracker(cls, value: Any) -> Any:
        # TRL's report_to is a list as often as a word; one tracker at a time here.
        if isinstance(value, list) and len(value) == 1:
            return value[0]
        if isinstance(value, list) and not value:
            return "none"
        return value

    @field_validator("top_k", "top_p")
    @classmethod
    def _sample_from_the_whole_distribution(cls, value: float, info: ValidationInfo) -> float:
        # A truncated sampler would make the policy that acts differ from the one PPO optimises.
        whole = 0 if info.field_name == "top_k" else 1.0
        if value != whole:
            raise ValueError(
                f"{value:g} would sample from a truncated distribution, but PPO's log-probs, KL "
                "and entropy are those of the whole softmax(logits / temperature), so PPO "
                f"samples from it: leave {info.field_name} at {whole:g}"
            )
        return value

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

    @model_validator(mode="after")
    def _one_warm_up(self) -> PPOConfig:
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio:g}) "
                "both set the warm-up: give one"
            )
        return self

    @property
    def warmup_step_count(self) -> int:
        """Warm-up steps, from warmup_steps or warmup_ratio (rounded up, as transformers does)."""
        return self.warmup_steps or math.ceil(self.warmup_ratio * self.steps)

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


class SFTOptions(BaseModel):
    """Supervised fine-tuning (`policy-trainer sft`), with the defaults of a short run on a small
    policy."""

    model_config = ConfigDict(extra="forbid", title="SFT settings")

    epochs: float = Field(
        1.0, gt=0, description="Passes over the demonstrations (a fraction stops part-way)."
    )
    learning_rate: Annotated[float, Flag("--lr")] = Field(
        5e-5, gt=0, description="Learning rate, after a linear warm-up; then linear decay to 0."
    )
    batch_size: int = Field(8, ge=1, description="Demonstrations per optimiser step.")
    max_length: int = Field(
        128,
        ge=2,
        description="Tokens per example, prompt included; longer examples are cut at the end.",
    )
    warmup_ratio: float = Field(
        0.1, ge=0, lt=1, description="Share of the steps over which the learning rate warms up."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    seed: int = Field(0, description="Seed (adapter initialisation, data order).")
    logging_steps: int = Field(10, ge=1, description="Log the training loss every this many steps.")
    loss_examples: int = Field(
        128,
        ge=1,
        description="The loss before and after training is measured on this many demonstrations "
        "(the first ones).",
    )
    lora: LoraOptions = Field(
        default_factory=LoraOptions,
        description="LoRA adapters (r=0: full fine-tuning); merged into the weights when saved.",
    )


class EvaluationSettings(BaseModel):
    """Sampling for `policy-trainer evaluate`, as PPO samples (no top-k, no top-p)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="evaluation settings")

    max_new_tokens: int = Field(53, ge=1, description="Response length limit, as PPOConfig's.")
    temperature: float = Field(0.7, gt=0, description="Sampling temperature, as in PPO.")
    samples_per_prompt: Annotated[int, Flag("--samples")] = Field(
        1, ge=1, description="Responses sampled per prompt."
    )
    batch_size: int = Field(32, ge=1, description="Prompts per generation batch.")
    max_prompts: int | None = Field(
        None, description="Use only the file's first this many prompts; None: all."
    )
    seed: int = Field(0, description="Seed of the sampling.")


class SampleOptions(BaseModel):
    """`policy-trainer sample`: K completions per prompt for people to rank, drawn as PPO draws
    them (the whole softmax at PPO's temperature, up to PPO's response length)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="sampling settings")

    k: int = Field(
        4, ge=2, le=9, description="Completions per prompt (2 to 9, as a ranking campaign takes)."
    )
    temperature: float = Field(
        PPOConfig.model_fields["temperature"].default,
        gt=0,
        description="Sampling temperature, PPOConfig's by default.",
    )
    max_new_tokens: int = Field(
        PPOConfig.model_fields["max_new_tokens"].default,
        ge=1,
        description="Response length limit, PPOConfig's by default.",
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longer prompts keep their last this many tokens, as in PPO."
    )
    seed: int = Field(0, description="Seed of the sampling: the same seed, the same file.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Prompts per generation batch (each with its K completions); part of what "
        "the seed reproduces.",
    )


class DemoOptions(BaseModel):
    """`policy-trainer demo`: the whole RLHF process on the default models."""

    model_config = ConfigDict(extra="forbid", title="demo settings")

    run_dir: Path = Field(Path("runs/demo"), description="Where everything is written.")
    ppo_steps: int = Field(70, description="PPO steps of 32 prompts.")
    sft_epochs: float = Field(
        0.0, description="Epochs of SFT on positive snippets first; 0: no SFT stage."
    )
    eval_prompts: int = Field(128, description="Held-out prompts for the before/after table.")
    port: int = Field(8765, description="The reward server's loopback port.")
    seed: int = Field(0, description="Seed of the demo data, SFT, PPO and evaluation.")
    ppo_args: Annotated[list[str], Flag("--ppo-arg", repeat=True, metavar="--FLAG=VALUE")] = Field(
        default_factory=list,
        description="Passed on to `policy-trainer ppo`, e.g. --ppo-arg=--kl-coef=0.1.",
    )
    server_threads: int = Field(
        1, ge=1, description="Threads of the reward server, which shares the cores with PPO."
    )


class DemoDataOptions(BaseModel):
    """`policy-trainer demo-data`: which VADER movie snippets become the demo's demonstrations
    and prompts (see `demo_data`)."""

    model_config = ConfigDict(extra="forbid", title="demo data settings")

    min_rating: float = Field(
        2.0,  # "moderately positive" or more, on average over the raters
        description="SFT demonstrations: train-split snippets whose raters' mean (-4..+4) is at "
        "least this.",
    )
    prompt_words: Annotated[tuple[int, int], Flag(metavar=("MIN", "MAX"))] = Field(
        (4, 8), description="An opening is MIN to MAX words."
    )
    eval_prompts: int = Field(
        64, description="Test-split openings kept apart from PPO for evaluation."
    )
    seed: int = Field(0, description="Seed of the opening lengths and of the held-out draw.")


# --- validation ------------------------------------------------------------------------------


def build_settings(
    settings: type[Settings], values: Mapping[str, Any], source: Path | None = None
) -> Settings:
    """`settings` from `values` (a file's, then the flags given), or ConfigError naming each
    refused field and why."""
    try:
        return settings(**values)
    except ValidationError as error:
        problems = describe_validation_errors(error.errors())
        where = f" in {source}" if source is not None else ""
        title = settings.model_config.get("title", settings.__name__)
        raise ConfigError(f"invalid {title}{where}: {problems}") from None


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
    return build_settings(PPOConfig, values, source=file)


# --- command-line flags ----------------------------------------------------------------------


def settings_from_args(args: argparse.Namespace, settings: type[Settings]) -> Settings:
    """`settings` from the defaults and the flags given, or ConfigError (see build_settings)."""
    return build_settings(settings, settings_overrides(args, settings))
