"""How human rankings become training examples. Pure functions; tests pin each rule.

The binary recipe (a 2-label classifier, as in the seed's process): the best-ranked completion of
each ranking is a positive (1) example and the worst-ranked a negative (0); ``middle`` decides the
ranks in between. The pairwise recipe (InstructGPT, TRL's RewardTrainer): a ranking of K
completions is every one of its K*(K-1)/2 (chosen, rejected) pairs.

Ties (equal ranks, standard competition form: ``[1, 1, 3]``) say neither completion is better:
- pairwise: a tied pair gives no pair; every pair of completions with different ranks gives one;
- binary: the whole best group (rank 1) is positive and the whole worst group (the largest rank)
  negative; a ranking that is all one tie, best and worst at once, gives no example at all; the
  groups in between follow ``middle``, ``split`` placing a tied group by the mean of the places
  it spans (``[1, 2, 2, 4]``: the two at places 2 and 3 sit at 2.5, the exact middle of four,
  and are left out).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from reward_service.training.data import Labelled, Pair, Ranking, Record, Scored

MiddleRanks = Literal["drop", "positive", "negative", "split"]
MIDDLE_RANKS: tuple[MiddleRanks, ...] = ("drop", "positive", "negative", "split")


def ranking_to_labels(ranking: Ranking, middle: MiddleRanks = "drop") -> list[Labelled]:
    """Rank 1 -> label 1, the worst rank -> label 0; ranks in between by ``middle``:

    - ``drop``: left out (the default: only the clearest judgements become labels);
    - ``positive`` / ``negative``: all labelled 1 / 0;
    - ``split``: the better half 1, the worse half 0, the exact middle of an odd K left out.

    Tied completions share their label (see the module's rule for ties); a ranking that is one
    tie gives none. Examples come out in completion order.
    """
    if middle not in MIDDLE_RANKS:
        raise ValueError(f"middle must be one of {', '.join(MIDDLE_RANKS)}, got {middle!r}")
    ranks = ranking.ranks
    examples = []
    for completion, rank in zip(ranking.completions, ranks, strict=True):
        label = _label_for_rank(rank, ranks.count(rank), max(ranks), len(ranks), middle)
        if label is not None:
            examples.append(Labelled(ranking.prompt, completion, label))
    return examples


def _label_for_rank(
    rank: int, tied: int, worst: int, count: int, middle: MiddleRanks
) -> int | None:
    """The label of a completion of rank `rank`, shared by `tied` completions, in a ranking of
    `count` whose worst rank is `worst`."""
    if worst == 1:  # all tied: the best are the worst, and nothing tells good from bad
        return None
    if rank == 1:
        return 1
    if rank == worst:
        return 0
    if middle == "positive":
        return 1
    if middle == "negative":
        return 0
    if middle == "split":
        # A tied group spans places rank .. rank + tied - 1; it sits at their mean, and the
        # middle place of `count` is (count + 1) / 2 (both doubled, to stay in integers).
        place_doubled = 2 * rank + tied - 1
        if place_doubled < count + 1:
            return 1
        if place_doubled > count + 1:
            return 0
    return None


def ranking_to_pairs(ranking: Ranking) -> list[Pair]:
    """Every (better, worse) pair of the ranking, best chosen first: K*(K-1)/2 pairs without
    ties; two tied completions make no pair."""
    order = _indices_best_first(ranking.ranks)
    ranks, completions = ranking.ranks, ranking.completions
    return [
        Pair(ranking.prompt, completions[chosen], completions[rejected])
        for position, chosen in enumerate(order)
        for rejected in order[position + 1 :]
        if ranks[chosen] < ranks[rejected]
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
