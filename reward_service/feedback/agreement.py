"""Agreement between raters, with the consensus, with gold rankings and with the reward model.

Pure functions over plain lists; nothing here knows the database. A ranking is a list of
"standard competition" ranks in the item's original completion order: 1 = best, tied completions
share a rank and the next rank skips (``[1, 1, 3, 4]``).

Where several rankings of one item are passed, they come either as a list (one ranking per rater,
raters unnamed) or as a mapping rater -> ranking. Skipped judgements have no ranking: leave them
out.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np
from scipy.stats import rankdata

Ranking = Sequence[int]
# One item's rankings: a list (raters unnamed) or a mapping rater -> ranking.
ItemRankings = Sequence[Ranking] | Mapping[Hashable, Ranking]
RankingsByItem = Mapping[Hashable, ItemRankings]


def _rankings_of(item_rankings: ItemRankings) -> list[Ranking]:
    if isinstance(item_rankings, Mapping):
        return list(item_rankings.values())
    return list(item_rankings)


def _same_length(rankings: Sequence[Ranking]) -> int:
    lengths = {len(ranking) for ranking in rankings}
    if len(lengths) > 1:
        raise ValueError(f"rankings of one item must have the same length, got {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _preference(ranking: Ranking, i: int, j: int) -> int:
    """-1: i is better; 1: j is better; 0: tied."""
    return (ranking[i] > ranking[j]) - (ranking[i] < ranking[j])


def _pair_counts(first: Ranking, second: Ranking) -> tuple[int, int]:
    """(completion pairs both rankings order the same way, all completion pairs); a tie in both
    counts as the same way."""
    n = _same_length([first, second])
    agreeing = sum(
        _preference(first, i, j) == _preference(second, i, j) for i, j in combinations(range(n), 2)
    )
    return agreeing, n * (n - 1) // 2


def _ratio(agreeing: int, total: int) -> float:
    return agreeing / total if total else math.nan


def _competition_ranks(keys: Sequence[float]) -> list[int]:
    """Standard competition ranks of ``keys``, the smallest key best (rank 1)."""
    return [int(rank) for rank in rankdata(keys, method="min")]


def pairwise_agreement(rankings_by_item: RankingsByItem) -> float:
    """Over all items, all pairs of the item's raters and all pairs (i < j) of its completions: the
    fraction of (rater pair, completion pair) where both raters order i and j the same way (both
    prefer i, both prefer j, or both tie them). nan if there is no such pair."""
    agreeing = total = 0
    for item_rankings in rankings_by_item.values():
        rankings = _rankings_of(item_rankings)
        _same_length(rankings)
        for first, second in combinations(rankings, 2):
            pair_agreeing, pairs = _pair_counts(first, second)
            agreeing += pair_agreeing
            total += pairs
    return _ratio(agreeing, total)


def agreement_with(reference: Ranking, ranking: Ranking) -> float:
    """Pairwise agreement of one ranking with a reference ranking of the same item (a consensus, a
    gold ranking): the fraction of completion pairs ordered the same way, ties included."""
    return _ratio(*_pair_counts(reference, ranking))


def kendalls_w(rankings: Sequence[Ranking]) -> float:
    """Kendall's coefficient of concordance W of m raters' rankings of one item's n completions,
    corrected for ties: 1 = all raters agree, 0 = no agreement beyond chance. nan for fewer than
    two raters, fewer than two completions, or when every rater ties every completion."""
    m = len(rankings)
    n = _same_length(rankings)
    if m < 2 or n < 2:
        return math.nan
    # W is defined on mid-ranks: tied completions share the mean of the places they occupy, so
    # competition ranks [1, 1, 3, 4] become [1.5, 1.5, 3, 4].
    mid_ranks = np.array([rankdata(ranking, method="average") for ranking in rankings])
    rank_sums = mid_ranks.sum(axis=0)  # R_i, one per completion
    mean_rank_sum = m * (n + 1) / 2
    s = float(((rank_sums - mean_rank_sum) ** 2).sum())
    # Kendall & Babington Smith (1939), "The Problem of m Rankings", Ann. Math. Statist. 10(3);
    # Siegel & Castellan (1988), Nonparametric Statistics for the Behavioral Sciences, 2nd ed.,
    # section 9.4:  W = 12 S / (m^2 (n^3 - n) - m sum_j T_j),
    # S = sum_i (R_i - m(n + 1)/2)^2,  T_j = sum over rater j's tie groups of (t^3 - t).
    sum_t = sum(t**3 - t for ranking in rankings for t in Counter(ranking).values())
    denominator = m**2 * (n**3 - n) - m * sum_t
    if denominator == 0:
        return math.nan
    return 12 * s / denominator


def krippendorff_alpha_ordinal(rankings_by_item: RankingsByItem) -> float:
    """Krippendorff's alpha, ordinal, over a campaign: the units are (item, completion index), a
    unit's values are the ranks raters gave that completion, the coders are the raters. nan when
    no unit has two ranks, or all paired ranks are one value (no disagreement is possible).

    Reliability data has one row per rater (np.nan where the rater did not rank the item). Alpha
    only uses how often each value occurs in each unit, so for unnamed raters (lists) the i-th
    ranking of every item shares row i without changing the result.
    """
    rows: dict[Hashable, int] = {}
    cells: list[tuple[Hashable, int, int]] = []  # (row key, unit, rank)
    units = 0
    for item_rankings in rankings_by_item.values():
        if isinstance(item_rankings, Mapping):
            keyed = [(("rater", rater), ranks) for rater, ranks in item_rankings.items()]
        else:
            keyed = [(("position", j), ranks) for j, ranks in enumerate(item_rankings)]
        n = _same_length([ranks for _, ranks in keyed])
        for row_key, ranks in keyed:
            rows.setdefault(row_key, len(rows))
            cells.extend((row_key, units + c, rank) for c, rank in enumerate(ranks))
        units += n
    data = np.full((len(rows), units), np.nan)
    for row_key, unit, rank in cells:
        data[rows[row_key], unit] = rank
    coded = ~np.isnan(data)
    pairable = coded.sum(axis=0) >= 2
    if len(np.unique(data[:, pairable][coded[:, pairable]])) < 2:
        return math.nan
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


def consensus(rankings: Sequence[Ranking]) -> list[int]:
    """The consensus of several rankings of one item: completions ordered by mean rank (lower is
    better), equal means tied, as competition ranks."""
    if not rankings:
        raise ValueError("a consensus needs at least one ranking")
    _same_length(rankings)
    # Rank sums order the completions exactly as the mean ranks do, in integers.
    return _competition_ranks([sum(ranks) for ranks in zip(*rankings, strict=True)])


def borda(rankings: Sequence[Ranking]) -> list[int]:
    """The Borda count of several rankings of one item, as competition ranks: each ranking gives a
    completion one point per completion it places strictly below it and half a point per other
    completion tied with it; most points best."""
    if not rankings:
        raise ValueError("a Borda count needs at least one ranking")
    n = _same_length(rankings)
    doubled_points = [0] * n  # twice the points, to stay in integers
    for ranking in rankings:
        for c in range(n):
            worse = sum(other > ranking[c] for other in ranking)
            tied_others = sum(other == ranking[c] for other in ranking) - 1
            doubled_points[c] += 2 * worse + tied_others
    return _competition_ranks([-points for points in doubled_points])


def model_pairwise_accuracy(scores: Sequence[float], ranking: Ranking) -> tuple[int, int]:
    """(pairs the model agrees with, pairs) over the completion pairs the ranking orders strictly
    (ties give no pair): the model agrees when the better-ranked completion has the higher score;
    equal scores do not agree."""
    if len(scores) != len(ranking):
        raise ValueError(f"{len(scores)} scores for a ranking of {len(ranking)} completions")
    agreeing = total = 0
    for i, j in combinations(range(len(ranking)), 2):
        preference = _preference(ranking, i, j)
        if preference == 0:
            continue
        better, worse = (i, j) if preference < 0 else (j, i)
        total += 1
        agreeing += scores[better] > scores[worse]
    return agreeing, total


# ---- one campaign's figures, as the quality page shows them ----


@dataclass(frozen=True)
class ItemJudgements:
    """One item's judgements: rater -> criterion -> ranks (skipped judgements left out), the gold
    ranking per criterion if the item is a gold item, and the reward model's score of each
    completion if known."""

    rankings: Mapping[str, Mapping[str, Ranking]]
    gold: Mapping[str, Ranking] | None = None
    model_scores: Sequence[float] | None = None


@dataclass(frozen=True)
class CriterionAgreement:
    """Agreement between raters on one criterion over the campaign, and the model's agreement with
    every collected ranking of that criterion (pairs pooled over judgements)."""

    pairwise: float
    kendalls_w_mean: float  # mean over the items where W is defined (two raters or more)
    kendalls_w_items: int
    krippendorff_alpha: float
    model_agreeing_pairs: int
    model_pairs: int

    @property
    def model_accuracy(self) -> float:
        return _ratio(self.model_agreeing_pairs, self.model_pairs)


@dataclass(frozen=True)
class RaterAgreement:
    """One rater against the consensus (mean rank) of the other raters of the same items, and
    against gold rankings; completion pairs pooled over items and criteria."""

    items: int
    consensus_agreeing_pairs: int
    consensus_pairs: int
    gold_agreeing_pairs: int
    gold_pairs: int

    @property
    def with_consensus(self) -> float:
        return _ratio(self.consensus_agreeing_pairs, self.consensus_pairs)

    @property
    def with_gold(self) -> float:
        return _ratio(self.gold_agreeing_pairs, self.gold_pairs)


@dataclass(frozen=True)
class CampaignAgreement:
    criteria: dict[str, CriterionAgreement]
    raters: dict[str, RaterAgreement]


def campaign_agreement(
    items: Mapping[Hashable, ItemJudgements], criteria: Sequence[str]
) -> CampaignAgreement:
    """Every agreement figure of a campaign: per criterion (pairwise agreement, mean Kendall's W,
    Krippendorff's alpha, the model's pairwise accuracy), and per rater (with the leave-one-out
    consensus of the others, with gold)."""
    return CampaignAgreement(
        criteria={criterion: _criterion_agreement(items, criterion) for criterion in criteria},
        raters=_rater_agreement(items, criteria),
    )


def _rankings_for(item: ItemJudgements, criterion: str) -> dict[str, Ranking]:
    return {
        rater: by_criterion[criterion]
        for rater, by_criterion in item.rankings.items()
        if criterion in by_criterion
    }


def _criterion_agreement(
    items: Mapping[Hashable, ItemJudgements], criterion: str
) -> CriterionAgreement:
    by_item = {key: _rankings_for(item, criterion) for key, item in items.items()}
    ws = [w for w in (kendalls_w(list(r.values())) for r in by_item.values()) if not math.isnan(w)]
    model_agreeing = model_pairs = 0
    for key, item in items.items():
        if item.model_scores is None:
            continue
        for ranking in by_item[key].values():
            agreeing, pairs = model_pairwise_accuracy(item.model_scores, ranking)
            model_agreeing += agreeing
            model_pairs += pairs
    return CriterionAgreement(
        pairwise=pairwise_agreement(by_item),
        kendalls_w_mean=sum(ws) / len(ws) if ws else math.nan,
        kendalls_w_items=len(ws),
        krippendorff_alpha=krippendorff_alpha_ordinal(by_item),
        model_agreeing_pairs=model_agreeing,
        model_pairs=model_pairs,
    )


def _rater_agreement(
    items: Mapping[Hashable, ItemJudgements], criteria: Sequence[str]
) -> dict[str, RaterAgreement]:
    counts: dict[str, list[int]] = {}  # rater -> [items, consensus agree, pairs, gold agree, pairs]
    for item in items.values():
        for rater in item.rankings:
            counts.setdefault(rater, [0, 0, 0, 0, 0])[0] += 1
        for criterion in criteria:
            rankings = _rankings_for(item, criterion)
            gold = (item.gold or {}).get(criterion)
            for rater, ranking in rankings.items():
                others = [other for name, other in rankings.items() if name != rater]
                if others:
                    agreeing, pairs = _pair_counts(consensus(others), ranking)
                    counts[rater][1] += agreeing
                    counts[rater][2] += pairs
                if gold is not None:
                    agreeing, pairs = _pair_counts(gold, ranking)
                    counts[rater][3] += agreeing
                    counts[rater][4] += pairs
    return {rater: RaterAgreement(*figures) for rater, figures in counts.items()}
