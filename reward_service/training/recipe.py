"""The default reward model: MiniLM-L6 fine-tuned on the VADER movie snippets' human ratings.

Steps: write the fixed split (``vader.write_vader_data``), train on the training split with the
validation split for early stopping, evaluate on the held-out test split, and put the test figures
into the folder's description and model card. ``reward-service vader-data``, ``train`` and
``evaluate`` run the same steps one by one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from reward_service.training import vader
from reward_service.training.base_encoder import is_default_base
from reward_service.training.config import Objective, TrainConfig
from reward_service.training.evaluate import evaluate_file, format_table
from reward_service.training.model_card import (
    VADER_RECIPE_NOTES,
    TrainResult,
    describe,
    write_model_card,
)
from reward_service.training.train import train, write_reward_config

# Chosen on the validation split; the card's "How the recipe was chosen" has the figures.
DEFAULT_CONFIG = TrainConfig(
    objective="regression",
    epochs=5,
    learning_rate=1e-4,
    batch_size=32,
    max_length=96,
    dropout=0.0,
    patience=2,
)
# Which training file each objective reads.
TRAIN_FILES = {
    "binary": "train.rankings",
    "pairwise": "train.rankings",
    "regression": "train.scores",
}
EVAL_FILES = {
    "binary": "validation.rankings",
    "pairwise": "validation.rankings",
    "regression": "validation.scores",
}


def data_description(config: TrainConfig) -> str:
    if config.objective == "regression":
        shape = "the raters' mean scores"
    else:
        shape = f"rankings of {vader.DEFAULT_RANKING_SIZE} snippets by the raters' mean"
    return f"VADER movie-review snippets (Hutto & Gilbert 2014, 15+ raters each), {shape}"


def build_vader_model(
    out: Path, config: TrainConfig = DEFAULT_CONFIG, *, with_validation: bool = True
) -> tuple[TrainResult, str]:
    """Train into ``out``; returns the training result and the test-split table.

    ``with_validation``: train on the train and validation splits together, for the epochs chosen
    on validation (the per-epoch figures and the normalisation are then on seen inputs); the
    test split stays held out either way.
    """
    with tempfile.TemporaryDirectory(prefix="vader-data-") as data_dir:
        files = vader.write_vader_data(Path(data_dir))
        data = data_description(config)
        train_file = files[TRAIN_FILES[config.objective]]
        eval_file = files[EVAL_FILES[config.objective]]
        if with_validation:
            data += ", train and validation splits"
            joined = Path(data_dir) / f"train+{eval_file.name}"
            joined.write_text(train_file.read_text() + eval_file.read_text(), encoding="utf-8")
            train_file = joined
            config = config.model_copy(update={"patience": config.epochs})  # no early stopping
        result = train(train_file, out, config, eval_file=eval_file, data_description=data)
        rows, held_out = evaluate_file({"this model": out}, files["test.scores"])
        out_of_domain = {
            corpus: format_table(
                *evaluate_file({"this model": out}, files[f"{corpus}.scores"]),
                config.min_score_gap,
            )
            for corpus in vader.OUT_OF_DOMAIN
        }
    table = format_table(rows, held_out, config.min_score_gap)
    test = rows[0].figures
    split = (
        f"Split by snippet id (sha256 of `movie-<id>` mod 100: < {vader.TEST_PERCENT} test, "
        f"< {vader.TEST_PERCENT + vader.VALIDATION_PERCENT} validation, else train); "
        f"the tweets, Amazon and NYT files are not trained on."
    )
    description = describe(result, data, test_figures=test)
    if with_validation:
        description = description.replace("the held-out inputs", "the validation split")
        split += (
            " Trained on train + validation: the per-epoch figures and the normalisation use the "
            "validation split, seen in training; only the test split is held out."
        )
    write_reward_config(out, config, result, description)
    table += "".join(
        f"\n\n### Out of domain: {vader.OUT_OF_DOMAIN[corpus]}\n\n{corpus_table}"
        for corpus, corpus_table in out_of_domain.items()
    )
    test_section = f"\n## Held-out test split\n\n{split}\n\n{table}\n"
    # The notes are the default recipe's measurements, made on MiniLM-L6.
    notes = VADER_RECIPE_NOTES if is_default_base(config.base) else ""
    write_model_card(out, config, result, data, extra=test_section + notes)
    return result, table


def with_objective(objective: Objective) -> TrainConfig:
    return DEFAULT_CONFIG.model_copy(update={"objective": objective})
