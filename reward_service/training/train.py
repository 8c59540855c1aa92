"""Fine-tune an encoder into a reward model; write a folder the service serves as it is.

Objectives (``TrainConfig.objective``):

- ``binary``, the seed's recipe: rankings become positive (1) / negative (0) examples
  (``rules.ranking_to_labels``); a 2-label classifier is trained with cross-entropy
  (transformers' ``Trainer``). Reward = log-odds of POSITIVE, ``logit_POSITIVE - logit_NEGATIVE``:
  the probability's monotone twin that does not saturate.
- ``pairwise``, InstructGPT's recipe: rankings become every (chosen, rejected) pair
  (``rules.ranking_to_pairs``; tied completions make none); a single-logit model is trained with
  the Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected)`` (TRL's ``RewardTrainer``), minus
  the pair's margin inside the sigmoid where a pairs file gives one (Llama 2). Reward = the logit.
- ``regression``, where the data carries numeric human scores: MSE on the z-scored scores
  (``Trainer`` with ``problem_type="regression"``). Reward = the logit.

Without an eval file, ``eval_fraction`` of the records is held out by prompt
(``split_by_prompt``): one prompt's records never land on both sides. Each epoch the held-out
figures (``evaluate.figures``) are computed; the weights of the best epoch by held-out pairwise
accuracy are kept, and training stops after ``patience`` epochs without improvement. The folder
gets weights, tokenizer, ``reward_config.json`` (the mapping above, plus a normalisation to mean
0 / std 1 on the held-out inputs) and a model card (README.md).
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from reward_service.model.inputs import format_inputs
from reward_service.model.mapping import REWARD_CONFIG_FILENAME, RewardMapping, resolve
from reward_service.model.precision import native_bf16
from reward_service.model.tokenization import TextEncoder
from reward_service.training.base_encoder import base_folder
from reward_service.training.config import MixedPrecision, Objective, TrainConfig
from reward_service.training.data import Record, Scored, read_records
from reward_service.training.evaluate import held_out_set, score_folder
from reward_service.training.model_card import TrainResult, describe, write_model_card
from reward_service.training.rules import labels_from, pairs_from
from reward_service.training.tracking import HeldOutTracker

logger = logging.getLogger(__name__)

# One segment: token_type_ids stay 0, as TRL's preference collator leaves them. BERT tokenizers
# drop the newline, so a completion without a prompt tokenizes exactly as the text alone.
TEMPLATE = "{prompt}\n{completion}"
# What the trainers' collators pass, and so the held-out figures too. Served, the folder also gets
# token_type_ids: all 0 for one segment, which is what BERT assumes where they are absent.
TRAINING_INPUT_NAMES = ("input_ids", "attention_mask")
# The config fields that hold an encoder's dropout rates (BERT-style names, then DistilBERT's).
DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
)

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

    transformers_logging.set_verbosity_error()  # the new head's "newly initialized" report
    started = time.monotonic()
    set_seed(config.seed)
    base = base_folder(config.base)
    training = read_records(train_file, config.data_format)
    train_records, eval_records = _train_and_held_out(training.records, eval_file, config)
    held_out = held_out_set(eval_records, config.min_score_gap)
    if len(held_out.better) == 0:
        raise ValueError("the held-out data yields no pairs to evaluate on")

    tokenizer = AutoTokenizer.from_pretrained(base)
    head = _HEADS[config.objective]
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        **head,
        label2id={name: index for index, name in head["id2label"].items()},
        **_dropout_settings(base, config.dropout),
    )
    mapping = reward_mapping(config.objective, config)
    resolved = resolve(mapping, id2label=head["id2label"], problem_type=head.get("problem_type"))
    # The tokenizer's own settings, so every id is what tokenizer(texts, truncation=True) gives.
    encoder = TextEncoder(
        tokenizer.backend_tokenizer,
        max_length=config.max_length,
        truncation_side=tokenizer.truncation_side,
        pad_token_id=tokenizer.pad_token_id or 0,
        input_names=TRAINING_INPUT_NAMES,
    )

    def encode(prompts: list[str], completions: list[str]) -> list[list[int]]:
        texts = format_inputs(mapping, prompts=prompts, completions=completions)
        return [item.input_ids for item in encoder.encode(texts)]

    held_out_inputs = format_inputs(
        mapping,
        prompts=[p for p, _ in held_out.inputs],
        completions=[c for _, c in held_out.inputs],
    )
    tracker = HeldOutTracker(held_out, held_out_inputs, encoder, resolved, config.patience)
    trainer, examples = _build_trainer(model, tokenizer, train_records, encode, config, tracker)
    logger.info(
        "training a %s reward model on %d examples from %d %s records; held out: %d items, "
        "%d pairs",
        config.objective,
        examples,
        len(train_records),
        training.format,
        len(held_out.inputs),
        len(held_out.better),
    )
    trainer.train()
    tracker.restore_best(trainer.model)

    result = TrainResult(
        objective=config.objective,
        base=str(base),
        train_file=str(train_file),
        train_format=training.format,
        train_records=len(train_records),
        train_examples=examples,
        held_out_items=len(held_out.inputs),
        held_out_pairs=len(held_out.better),
        epochs=tracker.history,
        best_epoch=tracker.best_epoch,
    )
    _write_folder(trainer.model, tokenizer, out, mapping)
    # Normalise as served: score the held-out inputs through the folder's own mapping.
    rewards = score_folder(out, held_out.inputs)
    result.normalization = {"mean": float(rewards.mean()), "std": float(rewards.std() or 1.0)}
    result.seconds = time.monotonic() - started
    description = describe(result, data_description or Path(train_file).name)
    write_reward_config(out, config, result, description)
    write_model_card(out, config, result, data_description or str(train_file))
    return result


def _dropout_settings(base: Path, dropout: float | None) -> dict[str, float]:
    """Config overrides that set every dropout rate the base's config has to ``dropout``."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    base_config = AutoConfig.from_pretrained(base)
    return {name: dropout for name in DROPOUT_FIELDS if hasattr(base_config, name)}


def _train_and_held_out(
    records: list[Record], eval_file: Path | None, config: TrainConfig
) -> tuple[list[Record], list[Record]]:
    if eval_file is not None:
        return records, read_records(eval_file).records
    return split_by_prompt(records, config.eval_fraction, config.seed)


def split_by_prompt(
    records: list[Record], eval_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """(training, held-out) records, held out by prompt: every record of one prompt (each rater's
    ranking of an item, each of its pairs) lands on the same side, so the held-out figures are
    those of prompts the model never saw. A record without a prompt is a group of its own.
    The groups are shuffled (seeded) and held out until ``eval_fraction`` of the records are."""
    groups: dict[str | int, list[int]] = {}
    for index, record in enumerate(records):
        groups.setdefault(record.prompt or index, []).append(index)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(len(records) * eval_fraction))
    held: list[int] = []
    taken = 0
    while len(held) < target and taken < len(order) - 1:  # one group at least left to train on
        held += order[taken]
        taken += 1
    if not held:
        raise ValueError(
            f"{len(records)} records of {len(order)} prompt(s) are too few to hold some prompts "
            "out; pass an eval file"
        )
    # Kept in the shuffled order, so that a file without prompts splits exactly by record.
    training = [index for group in order[taken:] for index in group]
    return [records[i] for i in training], [records[i] for i in held]


def _build_trainer(model, tokenizer, records, encode, config: TrainConfig, tracker):
    """The library trainer for the objective, and how many training examples it sees."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    bf16 = uses_bf16(config.mixed_precision)
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
        # Autocast only: the weights, the optimiser and the saved folder stay float32.
        bf16=bf16,
        # transformers refuses bf16 without a GPU unless told the CPU is meant.
        use_cpu=bf16 and not torch.cuda.is_available(),
        disable_tqdm=False,  # the progress bar, although transformers' own logging is quiet
    )
    if config.objective == "pairwise":
        from trl import RewardConfig, RewardTrainer

        pairs = pairs_from(records)
        chosen = encode([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = encode([p.prompt for p in pairs], [p.rejected for p in pairs])
        columns = {
            "chosen_ids": chosen,
            "rejected_ids": rejected,
            "length": [max(len(c), len(r)) for c, r in zip(chosen, rejected, strict=True)],
        }
        if any(pair.margin is not None for pair in pairs):
            # Llama 2's margin loss, -log sigmoid(r_chosen - r_rejected - margin), as TRL's
            # RewardTrainer computes it; a pair without a margin has 0, the plain loss.
            columns["margin"] = [pair.margin or 0.0 for pair in pairs]
        dataset = Dataset.from_dict(columns)
        args = RewardConfig(
            **common, max_length=None, gradient_checkpointing=False, remove_unused_columns=False
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[tracker.callback()],
        )
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
        model=model,
        args=TrainingArguments(**common),
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[tracker.callback()],
    )
    return trainer, len(input_ids)


def uses_bf16(setting: MixedPrecision) -> bool:
    """Whether training runs in bf16 autocast. ``auto`` takes it only where bf16 is native: on
    CPUs without AVX-512 BF16 or AMX it is emulated and slower than float32 (on this project's
    AVX-512 BF16 machine a MiniLM-L6 step of 32 snippets takes 0.43 s in bf16, 0.8-1.0 s in
    float32)."""
    if setting != "auto":
        return setting == "bf16"
    return native_bf16("auto")  # the GPU where there is one, as the Trainer takes it


def _write_folder(model, tokenizer, out: Path, mapping: RewardMapping) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / REWARD_CONFIG_FILENAME).write_text(mapping.model_dump_json(exclude_unset=True, indent=2))


def write_reward_config(
    out: Path, config: TrainConfig, result: TrainResult, description: str
) -> None:
    mapping = reward_mapping(
        result.objective, config, description=description, normalization=result.normalization
    )
    (out / REWARD_CONFIG_FILENAME).write_text(mapping.model_dump_json(exclude_unset=True, indent=2))
