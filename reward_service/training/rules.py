"""How human rankings become training examples. Pure functions; tests pin each rule.

The binary recipe (a 2-label classifier, as in the seed's process): the best-ranked completion of
each ranking is a positive (1) example and the worst-ranked a negative (0); ``middle`` decides the
ranks in between. The pairwise recipe (InstructGPT, TRL's RewardTrainer): a ranking of K
completions is every one of its K*(K-1)/2 (chosen, rejected) pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from reward_service.training.data import Labelled, Pair, Ranking, Record, Scored

MiddleRanks = Literal["drop", "positive", "negative", "split"]
MIDDLE_RANKS: tuple[MiddleRanks, ...] = ("drop", "positive", "negative", "split")


def ranking_to_labels(ranking: Ranking, middle: MiddleRanks = "drop") -> list[Labelled]:
    """Rank 1 -> label 1, rank K -> label 0; ranks in between by ``middle``:

    - ``drop``: left out (the default: only the clearest judgements become labels);
    - ``positive`` / ``negative``: all labelled 1 / 0;
    - ``split``: the better half 1, the worse half 0, the exact middle of an odd K left out.

    Examples come out in completion order.
    """
    if middle not in MIDDLE_RANKS:
        raise ValueError(f"middle must be one of {', '.join(MIDDLE_RANKS)}, got {middle!r}")
    worst = len(ranking.ranks)
    examples = []
    for completion, rank in zip(ranking.completions, ranking.ranks, strict=True):
        label = _label_for_rank(rank, worst, middle)
        if label is not None:
            examples.append(Labelled(ranking.prompt, completion, label))
    return examples


def _label_for_rank(rank: int, worst: int, middle: MiddleRanks) -> int | None:
    if rank == 1:
        return 1
    if rank == worst:
        return 0
    if middle == "positive":
        return 1
    if middle == "negative":
        return 0
    if middle == "split":
        if 2 * rank < worst + 1:
            return 1
        if 2 * rank > worst + 1:
            return 0
    return None


def ranking_to_pairs(ranking: Ranking) -> list[Pair]:
    """Every (better, worse) pair of the ranking: K*(K-1)/2 pairs, best chosen first."""
    by_rank = [ranking.completions[index] for index in _indices_best_first(ranking.ranks)]
    return [
        Pair(ranking.prompt, chosen, rejected)
        for position, chosen in enumerate(by_rank)
        for rejected in by_rank[position + 1 :]
    ]


def pair_to_ranking(pair: Pair) -> Ranking:
    """A pair is a ranking of two: chosen first."""
    return Ranking(pair.prompt, (pair.chosen, pair.rejected), (1, 2))


def rankings_from_scores(items: Sequence[Scored], k: int, seed: int) -> list[Ranking]:
    """Rankings of ``k`` items each, as labellers would rank them: the items shuffled (seeded) into
    groups of ``k``, each group ranked by score, higher first (equal scores: earlier item first).
    A last group smaller than 2 is left out."""
    if k < 2:
        raise ValueError(f"a ranking needs k >= 2 items, got {k}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    rankings = []
    for start in range(0, len(order), k):
        group = [items[index] for index in order[start : start + k]]
        if len(group) < 2:
            continue
        best_first = sorted(range(len(group)), key=lambda index: -group[index].score)
        ranks = [0] * len(group)
        for rank, index in enumerate(best_first, start=1):
            ranks[index] = rank
        rankings.append(
            Ranking(group[0].prompt, tuple(item.completion for item in group), tuple(ranks))
        )
    return rankings


def labels_from(records: Sequence[Record], middle: MiddleRanks = "drop") -> list[Labelled]:
    """Binary examples from rankings (by :func:`ranking_to_labels`), pairs (chosen 1, rejected 0)
    or labels (as they are)."""
    examples: list[Labelled] = []
    for record in records:
        if isinstance(record, Labelled):
            examples.append(record)
        elif isinstance(record, Ranking):
            examples += ranking_to_labels(record, middle)
        elif isinstance(record, Pair):
            examples += ranking_to_labels(pair_to_ranking(record), middle)
        else:
            raise ValueError("the binary objective needs rankings, pairs or labels, not scores")
    return examples


def pairs_from(records: Sequence[Record]) -> list[Pair]:
    """Pairwise examples from rankings (by :func:`ranking_to_pairs`) or pairs (as they are)."""
    examples: list[Pair] = []
    for record in records:
        if isinstance(record, Pair):
            examples.append(record)
        elif isinstance(record, Ranking):
            examples += ranking_to_pairs(record)
        else:
            raise ValueError("the pairwise objective needs rankings or pairs")
    return examples


def _indices_best_first(ranks: Sequence[int]) -> list[int]:
    return sorted(range(len(ranks)), key=lambda index: ranks[index])
