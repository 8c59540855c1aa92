"""A campaign's judgements as training data: ``rankings`` or ``pairs`` JSONL, or an ``hf`` folder.

- ``rankings``: one line per judgement x criterion (skipped judgements left out), the format
  ``reward-service train`` reads (it ignores the extra fields); with ``aggregate`` ("mean-rank" or
  "borda") one line per item x criterion instead, the raters' rankings combined.
- ``pairs``: one line per strictly ordered completion pair of a ranking (a tie gives no pair),
  with ``margin = (confidence - 1) / 3``: Llama 2's margin levels 0, 1/3, 2/3, 1, from
  "negligibly" to "significantly" better (null for a judgement imported without a confidence).
  TRL's ``RewardTrainer`` takes prompt, chosen, rejected and margin.
- ``hf``: the pairs rows as a Hugging Face ``datasets.Dataset`` saved with ``save_to_disk``.

Rows come out in one order whatever the database: by item position, then rater name, then the
campaign's criteria in their order; nothing in them depends on when they were stored, so the same
campaign gives the same bytes from SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from itertools import combinations, groupby
from pathlib import Path
from typing import Any, Literal, get_args

from reward_service.cache import staged_folder
from reward_service.feedback.agreement import borda, consensus
from reward_service.feedback.store import Invalid, JudgementInfo, Store

ExportFormat = Literal["rankings", "pairs", "hf"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
Aggregate = Literal["mean-rank", "borda"]
AGGREGATES: tuple[Aggregate, ...] = get_args(Aggregate)

Row = dict[str, Any]

_AGGREGATORS: dict[Aggregate, Callable[[Sequence[Sequence[int]]], list[int]]] = {
    "mean-rank": consensus,
    "borda": borda,
}


def export(
    store: Store,
    campaign: str,
    format: ExportFormat,
    out: Path | str,
    aggregate: Aggregate | None = None,
) -> int:
    """Writes a campaign's export to ``out`` (a file, or a folder for ``hf``); returns the number
    of rows. The file or folder appears complete or not at all."""
    if format not in EXPORT_FORMATS:
        raise Invalid(f"unknown export format {format!r}; known: {', '.join(EXPORT_FORMATS)}")
    if aggregate is not None and (format != "rankings" or aggregate not in AGGREGATES):
        raise Invalid(
            f"aggregate {aggregate!r}: the rankings format aggregates, by {' or '.join(AGGREGATES)}"
        )
    criteria = store.campaign(campaign).criteria
    judgements = store.judgements(campaign)
    if format == "rankings":
        if aggregate is None:
            rows = ranking_rows(judgements, criteria)
        else:
            rows = aggregated_ranking_rows(judgements, criteria, aggregate)
        write_jsonl(rows, Path(out))
    elif format == "pairs":
        rows = pair_rows(judgements, criteria)
        write_jsonl(rows, Path(out))
    else:
        rows = pair_rows(judgements, criteria)
        save_pairs_dataset(rows, Path(out))
    return len(rows)


def ranking_rows(judgements: Iterable[JudgementInfo], criteria: Sequence[str]) -> list[Row]:
    """One rankings row per judgement x criterion; skipped judgements left out."""
    return [
        {
            "prompt": judgement.prompt,
            "completions": judgement.completions,
            "ranking": judgement.ranks[criterion],
            "criterion": criterion,
            "rater": judgement.rater,
            "confidence": judgement.confidence,
            "ties": has_ties(judgement.ranks[criterion]),
            "time_spent_ms": judgement.time_spent_ms,
            "flags": judgement.flags,
            "comment": judgement.comment,
            "item_id": judgement.item_id,
        }
        for judgement in _ranked_in_order(judgements)
        for criterion in criteria
    ]


def aggregated_ranking_rows(
    judgements: Iterable[JudgementInfo], criteria: Sequence[str], aggregate: Aggregate
) -> list[Row]:
    """One rankings row per item x criterion: its raters' rankings combined by ``aggregate``."""
    combine = _AGGREGATORS[aggregate]
    rows = []
    for _, group in groupby(_ranked_in_order(judgements), key=lambda j: j.item_position):
        item_judgements = list(group)
        first = item_judgements[0]
        for criterion in criteria:
            ranking = combine([judgement.ranks[criterion] for judgement in item_judgements])
            rows.append(
                {
                    "prompt": first.prompt,
                    "completions": first.completions,
                    "ranking": ranking,
                    "criterion": criterion,
                    "aggregate": aggregate,
                    "raters": [judgement.rater for judgement in item_judgements],
                    "ties": has_ties(ranking),
                    "item_id": first.item_id,
                }
            )
    return rows


def pair_rows(judgements: Iterable[JudgementInfo], criteria: Sequence[str]) -> list[Row]:
    """One pairs row per strictly ordered completion pair of each judgement x criterion."""
    rows = []
    for judgement in _ranked_in_order(judgements):
        for criterion in criteria:
            ranks = judgement.ranks[criterion]
            for better, worse in ordered_pairs(ranks):
                rows.append(
                    {
                        "prompt": judgement.prompt,
                        "chosen": judgement.completions[better],
                        "rejected": judgement.completions[worse],
                        "margin": confidence_margin(judgement.confidence),
                        "criterion": criterion,
                        "rater": judgement.rater,
                        "item_id": judgement.item_id,
                    }
                )
    return rows


def ordered_pairs(ranks: Sequence[int]) -> list[tuple[int, int]]:
    """(better, worse) completion indices of every pair the ranking orders; tied pairs left out."""
    return [
        (i, j) if ranks[i] < ranks[j] else (j, i)
        for i, j in combinations(range(len(ranks)), 2)
        if ranks[i] != ranks[j]
    ]


def confidence_margin(confidence: int | None) -> float | None:
    """Confidence 1..4 as a margin 0..1 (Llama 2's four levels of "better"); None for a
    judgement imported from a tool that asks for no confidence (training then uses no margin)."""
    return None if confidence is None else (confidence - 1) / 3


def has_ties(ranks: Sequence[int]) -> bool:
    return len(set(ranks)) < len(ranks)


def _ranked_in_order(judgements: Iterable[JudgementInfo]) -> list[JudgementInfo]:
    # (item, rater) is unique in a campaign, so this order is total.
    ranked = [judgement for judgement in judgements if not judgement.skipped]
    return sorted(ranked, key=lambda judgement: (judgement.item_position, judgement.rater))


def write_jsonl(rows: Iterable[Row], out: Path) -> None:
    """Writes rows as JSON lines; a temporary file renamed into place, so a reader never sees a
    half-written export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(partial, out)


def save_pairs_dataset(rows: list[Row], out: Path) -> None:
    """The pairs rows as a ``datasets.Dataset`` folder (``datasets.load_from_disk`` reads it)."""
    # Imported here: datasets takes seconds to import, and only this format needs it.
    from datasets import Dataset, Features, Value

    features = Features(
        {
            "prompt": Value("string"),
            "chosen": Value("string"),
            "rejected": Value("string"),
            "margin": Value("float64"),
            "criterion": Value("string"),
            "rater": Value("string"),
            "item_id": Value("int64"),
        }
    )
    with staged_folder(out) as staging:
        Dataset.from_list(rows, features=features).save_to_disk(str(staging))
