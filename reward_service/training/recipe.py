"""The default reward model: MiniLM-L6 fine-tuned on the VADER movie snippets' human ratings.

Steps: write the fixed split (``vader.write_vader_data``), train on the training split with the
validation split for early stopping, evaluate on the held-out test split, and put the test figures
into the folder's description and model card. ``reward-service vader-data``, ``train`` and
``evaluate`` run the same steps one by one.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from reward_service.training import vader
from reward_service.training.base_encoder import is_default_base
from reward_service.training.config import TrainConfig
from reward_service.training.data import Scored, read_records, write_records
from reward_service.training.distill import (
    augmented_texts,
    distillation_targets,
    read_teacher_rewards,
    sample_texts,
    write_teacher_rewards,
)
from reward_service.training.evaluate import (
    evaluate_file,
    format_table,
    held_out_set,
    score_folder,
)
from reward_service.training.model_card import (
    VADER_RECIPE_NOTES,
    TrainResult,
    describe,
    write_model_card,
)
from reward_service.training.precision_gate import describe_gate, run_gate
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
TEST_SPLIT_NAME = "the VADER movie snippets' test split"


def data_description(config: TrainConfig) -> str:
    if config.objective == "regression":
        shape = "the raters' mean scores"
    else:
        shape = f"rankings of {vader.DEFAULT_RANKING_SIZE} snippets by the raters' mean"
    return f"VADER movie-review snippets (Hutto & Gilbert 2014, 15+ raters each), {shape}"


@dataclass(frozen=True)
class Distillation:
    """Train on a teacher's scores too (``training.distill``): ``unlabelled`` texts of
    ``vader.read_unlabelled_texts`` and the rated snippets, scored by the ``teacher`` folder or
    read from a ``teacher_rewards`` file (``save_rewards``: write the teacher's rewards there), the
    rated snippets' targets blended with the teacher's by ``teacher_weight``."""

    unlabelled: int
    teacher_weight: float
    variants: int = 0
    teacher: Path | None = None
    teacher_rewards: Path | None = None
    save_rewards: Path | None = None
    seed: int = 0

    @property
    def source(self) -> str:
        return self.teacher.name if self.teacher is not None else str(self.teacher_rewards)


# The larger model's rewards (make rm-large's MPNet, test r 0.921) on the train and validation
# snippets, 3 variants of each and 3,000 unlabelled texts: `make teacher-rewards` rewrites the
# file from the teacher. Shipped, so that `make serve` distils the default without the teacher at
# hand.
SHIPPED_TEACHER_REWARDS = Path(__file__).parent / "teacher_rewards" / "mpnet-vader-movies.jsonl.gz"
DEFAULT_DISTILLATION = Distillation(
    unlabelled=3000, teacher_weight=1.0, variants=3, teacher_rewards=SHIPPED_TEACHER_REWARDS
)
# The default model: the recipe's settings for 3 epochs over the distilled set (39,103 texts,
# four times the rated snippets), about as many steps as 5 epochs over one variant each took;
# the card's "How the recipe was chosen" has the figures.
DISTILLED_CONFIG = DEFAULT_CONFIG.model_copy(update={"epochs": 3})


@dataclass
class VaderBuild:
    """What ``build_vader_model`` did: the training result, the test and out-of-domain tables,
    and the minutes spent on the teacher's scores (0 without distillation)."""

    result: TrainResult
    table: str
    teacher_seconds: float = 0.0


def build_vader_model(
    out: Path,
    config: TrainConfig = DEFAULT_CONFIG,
    *,
    with_validation: bool = True,
    distillation: Distillation | None = None,
) -> VaderBuild:
    """Train into ``out``; returns the training result and the test-split table.

    ``with_validation``: train on the train and validation splits together, for the epochs chosen
    on validation (the per-epoch figures and the normalisation are then on seen inputs); the
    test split stays held out either way.
    """
    if distillation is not None and config.objective != "regression":
        raise ValueError("distillation trains on the teacher's scores: use --objective regression")
    teacher_seconds = 0.0
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
        if distillation is not None:
            started = time.monotonic()
            train_file = _distilled_file(train_file, distillation)
            teacher_seconds = time.monotonic() - started
            data += (
                f", distilled from {distillation.source} (teacher weight "
                f"{distillation.teacher_weight:g}) with {distillation.unlabelled:,} unlabelled "
                "texts (the study's tweets, movie dialogues)"
                + _variants_phrase(distillation.variants)
                + " it scored"
            )
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
    gate = run_gate(out, held_out, held_out_name=TEST_SPLIT_NAME)
    table += "".join(
        f"\n\n### Out of domain: {vader.OUT_OF_DOMAIN[corpus]}\n\n{corpus_table}"
        for corpus, corpus_table in out_of_domain.items()
    )
    test_section = (
        f"\n## Held-out test split\n\n{split}\n\n{table}\n\n"
        f"Served precision (`--dtype auto`), {describe_gate(gate)}.\n"
    )
    # The notes are the default recipe's measurements, made on MiniLM-L6.
    notes = VADER_RECIPE_NOTES if is_default_base(config.base) else ""
    write_model_card(out, config, result, data, extra=test_section + notes)
    return VaderBuild(result, table, teacher_seconds)


def gate_on_test_split(folder: Path) -> dict:
    """The precision gate (``precision_gate``) of a folder this recipe built, on its test split."""
    with tempfile.TemporaryDirectory(prefix="vader-data-") as data_dir:
        files = vader.write_vader_data(Path(data_dir))
        held_out = held_out_set(read_records(files["test.scores"]).records)
    return run_gate(folder, held_out, held_out_name=TEST_SPLIT_NAME)


def unlabelled_inputs(rated: list[Scored], distillation: Distillation) -> list[str]:
    """The texts the teacher scores besides the rated ones: ``variants`` variants of each rated
    text, then the seeded sample of unlabelled texts."""
    unlabelled = sample_texts(
        vader.read_unlabelled_texts(), distillation.unlabelled, distillation.seed
    )
    # Variants of the rated training snippets, never of the test split's.
    variants = augmented_texts(
        [r.completion for r in rated], distillation.seed, per_text=distillation.variants
    )
    return variants + unlabelled


def _variants_phrase(variants: int) -> str:
    if variants == 0:
        return ""
    if variants == 1:
        return " and a variant of each rated snippet"
    return f" and {variants} variants of each rated snippet"


def _distilled_file(train_file: Path, distillation: Distillation) -> Path:
    rated = [r for r in read_records(train_file).records if isinstance(r, Scored)]
    unlabelled = unlabelled_inputs(rated, distillation)
    texts = [r.completion for r in rated] + unlabelled  # the VADER records have no prompt
    if distillation.teacher is not None:
        rewards = score_folder(distillation.teacher, [("", text) for text in texts])
        if distillation.save_rewards is not None:
            write_teacher_rewards(distillation.save_rewards, texts, rewards)
    elif distillation.teacher_rewards is not None:
        rewards = read_teacher_rewards(distillation.teacher_rewards, texts)
    else:
        raise ValueError("distillation needs a teacher folder or a file of its rewards")
    records = distillation_targets(
        rated, unlabelled, rewards, teacher_weight=distillation.teacher_weight
    )
    distilled = train_file.with_name(f"distilled-{train_file.name}")
    write_records(distilled, records)
    return distilled
