"""How well a reward model agrees with held-out human judgements, beside two baselines.

Figures, each on one held-out file:

- pairwise accuracy: of the held-out (better, worse) pairs, the share the model orders the same
  way (a tie counts half). Pairs come from rankings and pair files as they are; from scores, every
  two items whose human scores differ by at least ``min_score_gap`` (1 point by default); from
  labels, every (positive, negative) combination (so it equals the ROC AUC);
- Pearson and Spearman correlation with the human score (scores files only).

Baselines: the VADER lexicon (``vadersentiment``'s compound score), and where the file carries
each rater's score, one human against the mean of the others (the human ceiling).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reward_service.model.inputs import format_inputs
from reward_service.model.loading import load_model
from reward_service.model.spec import DType, ModelSpec
from reward_service.training.data import Labelled, Pair, Ranking, Record, Scored, read_records
from reward_service.training.rules import ranking_to_pairs

DEFAULT_MIN_SCORE_GAP = 1.0


@dataclass(frozen=True)
class HeldOutSet:
    """Unique (prompt, completion) inputs and which of them humans put above which."""

    inputs: list[tuple[str, str]]
    better: np.ndarray  # indices into inputs
    worse: np.ndarray
    scores: np.ndarray | None = None  # the human score of each input, for scores files
    ratings: list[tuple[float, ...]] | None = None  # each rater's score, where given


def held_out_set(
    records: Sequence[Record], min_score_gap: float = DEFAULT_MIN_SCORE_GAP
) -> HeldOutSet:
    index: dict[tuple[str, str], int] = {}

    def position(prompt: str, completion: str) -> int:
        return index.setdefault((prompt, completion), len(index))

    if all(isinstance(record, Scored) for record in records):
        return _scored_set(records, min_score_gap)  # type: ignore[arg-type]
    better: list[int] = []
    worse: list[int] = []
    positives: list[int] = []
    negatives: list[int] = []
    for record in records:
        if isinstance(record, Ranking):
            for pair in ranking_to_pairs(record):
                better.append(position(pair.prompt, pair.chosen))
                worse.append(position(pair.prompt, pair.rejected))
        elif isinstance(record, Pair):
            better.append(position(record.prompt, record.chosen))
            worse.append(position(record.prompt, record.rejected))
        elif isinstance(record, Labelled):
            slot = position(record.prompt, record.completion)
            (positives if record.label == 1 else negatives).append(slot)
        else:
            raise ValueError("a held-out file holds one kind of record")
    if positives or negatives:
        grid_better, grid_worse = np.meshgrid(positives, negatives, indexing="ij")
        better += grid_better.ravel().tolist()
        worse += grid_worse.ravel().tolist()
    return HeldOutSet(list(index), np.asarray(better, int), np.asarray(worse, int))


def _scored_set(records: Sequence[Scored], min_score_gap: float) -> HeldOutSet:
    scores = np.asarray([record.score for record in records], dtype=np.float64)
    better, worse = pairs_by_score_gap(scores, min_score_gap)
    ratings = [record.ratings for record in records]
    return HeldOutSet(
        [(record.prompt, record.completion) for record in records],
        better,
        worse,
        scores,
        ratings if all(rating is not None for rating in ratings) else None,  # type: ignore[misc]
    )


def pairs_by_score_gap(scores: np.ndarray, min_gap: float) -> tuple[np.ndarray, np.ndarray]:
    """(better, worse) indices of every two items whose scores differ by ``min_gap`` or more."""
    first, second = np.triu_indices(len(scores), k=1)
    difference = scores[first] - scores[second]
    keep = np.abs(difference) >= min_gap
    first, second, difference = first[keep], second[keep], difference[keep]
    first_is_better = difference > 0
    return np.where(first_is_better, first, second), np.where(first_is_better, second, first)


def pairwise_accuracy(rewards: np.ndarray, better: np.ndarray, worse: np.ndarray) -> float:
    """Share of pairs with reward[better] > reward[worse]; ties count half."""
    if len(better) == 0:
        return float("nan")
    margin = rewards[better] - rewards[worse]
    return float(np.mean((margin > 0) + 0.5 * (margin == 0)))


@dataclass(frozen=True)
class Figures:
    """A scorer's agreement with held-out human judgements (correlations: scores files only)."""

    pairwise_accuracy: float
    pearson: float | None = None
    spearman: float | None = None


@dataclass(frozen=True, kw_only=True)
class EpochFigures(Figures):
    """The held-out figures after one training epoch (``training.tracking``)."""

    epoch: int


def describe_figures(f: Figures) -> str:
    """``pairwise accuracy 0.912, Pearson r 0.834, Spearman 0.834``: for logs and descriptions."""
    text = f"pairwise accuracy {f.pairwise_accuracy:.3f}"
    if f.pearson is not None:
        text += f", Pearson r {f.pearson:.3f}, Spearman {f.spearman:.3f}"
    return text


def figures(rewards: np.ndarray, held_out: HeldOutSet) -> Figures:
    """The agreement of one reward per held-out input with the human judgements."""
    from scipy.stats import pearsonr, spearmanr

    rewards = np.asarray(rewards, dtype=np.float64)
    accuracy = pairwise_accuracy(rewards, held_out.better, held_out.worse)
    if held_out.scores is None:
        return Figures(accuracy)
    return Figures(
        accuracy,
        float(pearsonr(rewards, held_out.scores).statistic),
        float(spearmanr(rewards, held_out.scores).statistic),
    )


def one_human_vs_rest(held_out: HeldOutSet, min_score_gap: float) -> Figures | None:
    """The human ceiling: rater j's score as the reward, the mean of the other raters as the
    truth (its own pairs by ``min_score_gap``), averaged over j = each rater position that every
    item has (rater lists are anonymous and ragged: at least 15 per movie snippet)."""
    if held_out.ratings is None:
        return None
    raters = min(len(ratings) for ratings in held_out.ratings)
    if raters < 2:
        return None
    per_rater = []
    for j in range(raters):
        one = np.asarray([ratings[j] for ratings in held_out.ratings], dtype=np.float64)
        rest = np.asarray(
            [(sum(ratings) - ratings[j]) / (len(ratings) - 1) for ratings in held_out.ratings]
        )
        better, worse = pairs_by_score_gap(rest, min_score_gap)
        truth = HeldOutSet(held_out.inputs, better, worse, rest)
        per_rater.append(figures(one, truth))
    return Figures(
        float(np.mean([f.pairwise_accuracy for f in per_rater])),
        float(np.mean([f.pearson for f in per_rater])),
        float(np.mean([f.spearman for f in per_rater])),
    )


def vader_lexicon_rewards(inputs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The VADER lexicon's compound score (-1..1) of prompt and completion together."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.asarray(
        [analyzer.polarity_scores(f"{p} {c}".strip())["compound"] for p, c in inputs],
        dtype=np.float64,
    )


def score_folder(
    folder: Path,
    inputs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    device: str = "cpu",
    dtype: DType = "float32",
) -> np.ndarray:
    """Rewards exactly as the service would serve them from ``folder`` (mapping and normalisation
    from its reward_config.json), for (prompt, completion) inputs."""
    model = load_model(ModelSpec(name="evaluated", source=str(folder), device=device, dtype=dtype))
    formatted = format_inputs(
        model.mapping,
        prompts=[p for p, _ in inputs],
        completions=[c for _, c in inputs],
        render_chat=model.render_chat,
    )
    return model.score(formatted, batch_size=batch_size).rewards


@dataclass(frozen=True)
class Row:
    """One line of the evaluation table: a scorer and its figures."""

    name: str
    figures: Figures


def evaluation_rows(
    held_out: HeldOutSet,
    model_rewards: dict[str, np.ndarray],
    *,
    min_score_gap: float = DEFAULT_MIN_SCORE_GAP,
    baselines: bool = True,
) -> list[Row]:
    rows = [Row(name, figures(rewards, held_out)) for name, rewards in model_rewards.items()]
    if baselines:
        lexicon = vader_lexicon_rewards(held_out.inputs)
        rows.append(Row("VADER lexicon (compound)", figures(lexicon, held_out)))
        if (ceiling := one_human_vs_rest(held_out, min_score_gap)) is not None:
            rows.append(Row("one human vs mean of the rest", ceiling))
    return rows


def format_table(rows: Sequence[Row], held_out: HeldOutSet, min_score_gap: float) -> str:
    """A Markdown table: one row per scorer, one column per figure."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    name_width = max(len("scorer"), *(len(row.name) for row in rows))
    lines = [
        f"| {'scorer':<{name_width}} | Pearson r | Spearman | pairwise acc |",
        f"|{'-' * (name_width + 2)}|----------:|---------:|-------------:|",
    ]
    for row in rows:
        f = row.figures
        lines.append(
            f"| {row.name:<{name_width}} | {cell(f.pearson):>9} | {cell(f.spearman):>8} "
            f"| {cell(f.pairwise_accuracy):>12} |"
        )
    pairs_rule = (
        f"pairs whose human scores differ by >= {min_score_gap:g}"
        if held_out.scores is not None
        else "held-out pairs"
    )
    lines.append(f"\n{len(held_out.inputs):,} items, {len(held_out.better):,} {pairs_rule}.")
    return "\n".join(lines)


def evaluate_file(
    models: dict[str, Path],
    data: Path,
    *,
    min_score_gap: float = DEFAULT_MIN_SCORE_GAP,
    baselines: bool = True,
    device: str = "cpu",
) -> tuple[list[Row], HeldOutSet]:
    """Score ``data`` with each model folder; the table rows (baselines last) and the pairs."""
    held_out = held_out_set(read_records(data).records, min_score_gap)
    rewards = {
        name: score_folder(folder, held_out.inputs, device=device)
        for name, folder in models.items()
    }
    rows = evaluation_rows(held_out, rewards, min_score_gap=min_score_gap, baselines=baselines)
    return rows, held_out
