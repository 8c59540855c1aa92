"""Agreement figures of the quality page, each checked against a computation done by hand.

The fixed table: 3 raters, 2 items of 4 completions, one tie; rater r3 did not rank item B.
Ranks are standard competition ranks in the item's completion order, 1 = best.

    item A    c0 c1 c2 c3        item B    c0 c1 c2 c3
    r1         1  2  3  4        r1         1  1  3  4   (c0 and c1 tied)
    r2         1  3  2  4        r2         2  1  4  3
    r3         2  1  3  4        r3         -  -  -  -
"""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import permutations

import pytest

from reward_service.feedback.agreement import (
    ItemJudgements,
    agreement_with,
    borda,
    campaign_agreement,
    consensus,
    kendalls_w,
    krippendorff_alpha_ordinal,
    model_pairwise_accuracy,
    pairwise_agreement,
)

ITEM_A = {"r1": [1, 2, 3, 4], "r2": [1, 3, 2, 4], "r3": [2, 1, 3, 4]}
ITEM_B = {"r1": [1, 1, 3, 4], "r2": [2, 1, 4, 3]}
TABLE = {"A": ITEM_A, "B": ITEM_B}

# The library works in float64 on sums of at most a few dozen terms below 10^4 whose inputs are
# exact binary fractions (halves, quarters); its result is within a few ulps (~1e-16) of the exact
# fraction. 1e-12 leaves room for that and nothing else: a wrong formula is off by more than 1e-3.
FLOAT_TOLERANCE = 1e-12


def exactly(fraction: Fraction):
    return pytest.approx(float(fraction), rel=0, abs=FLOAT_TOLERANCE)


def test_pairwise_agreement_on_the_fixed_table_is_18_of_24_rater_and_completion_pairs():
    # Item A, 3 rater pairs x 6 completion pairs:
    #   r1 vs r2 differ only on (c1, c2)                      -> 5 of 6
    #   r1 vs r3 differ only on (c0, c1)                      -> 5 of 6
    #   r2 vs r3 differ on (c0, c1) and (c1, c2)              -> 4 of 6
    # Item B, 1 rater pair: r1 ties (c0, c1) where r2 prefers c1, and they order (c2, c3)
    #   opposite ways; the other 4 pairs agree               -> 4 of 6
    # Total (5 + 5 + 4 + 4) / (6 + 6 + 6 + 6) = 18 / 24.
    assert pairwise_agreement(TABLE) == exactly(Fraction(18, 24))


def test_kendalls_w_of_item_a_is_seven_ninths():
    # m = 3 raters, n = 4 completions, no ties.
    # Rank sums R = (1+1+2, 2+3+1, 3+2+3, 4+4+4) = (4, 6, 8, 12); mean m(n+1)/2 = 7.5.
    # S = 3.5^2 + 1.5^2 + 0.5^2 + 4.5^2 = 12.25 + 2.25 + 0.25 + 20.25 = 35.
    # W = 12 S / (m^2 (n^3 - n)) = 420 / (9 * 60) = 7/9.
    assert kendalls_w(list(ITEM_A.values())) == exactly(Fraction(7, 9))


def test_kendalls_w_of_item_b_uses_mid_ranks_and_the_tie_correction():
    # m = 2, n = 4. r1's tie [1, 1, 3, 4] becomes the mid-ranks [1.5, 1.5, 3, 4].
    # R = (1.5+2, 1.5+1, 3+4, 4+3) = (3.5, 2.5, 7, 7); mean m(n+1)/2 = 5.
    # S = 1.5^2 + 2.5^2 + 2^2 + 2^2 = 2.25 + 6.25 + 4 + 4 = 16.5.
    # Ties: r1 has one group of t = 2, T_1 = 2^3 - 2 = 6; r2 none, T_2 = 0.
    # W = 12 S / (m^2 (n^3 - n) - m sum T) = 198 / (4*60 - 2*6) = 198 / 228 = 33/38
    # (without the correction it would be 198 / 240 = 0.825).
    assert kendalls_w(list(ITEM_B.values())) == exactly(Fraction(33, 38))


def coincidences_by_hand(units: list[list[int]]) -> dict[tuple[int, int], Fraction]:
    """Krippendorff's coincidence matrix: each unit with m_u >= 2 values adds, for every ordered
    pair of its values taken from two different coders, 1 / (m_u - 1) to o[c, k]."""
    o: dict[tuple[int, int], Fraction] = {}
    for values in units:
        if len(values) < 2:
            continue
        for c, k in permutations(values, 2):
            o[c, k] = o.get((c, k), Fraction(0)) + Fraction(1, len(values) - 1)
    return o


def ordinal_alpha_by_hand(units: list[list[int]]) -> Fraction:
    """alpha = 1 - (n - 1) sum_ck o_ck delta_ck / sum_ck n_c n_k delta_ck with the ordinal metric
    delta_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2 (Krippendorff 2011, "Computing
    Krippendorff's Alpha-Reliability", section E), in exact fractions."""
    o = coincidences_by_hand(units)
    values = sorted({c for c, _ in o})
    n_c = {c: sum(count for (row, _), count in o.items() if row == c) for c in values}
    n = sum(n_c.values())

    def delta(c: int, k: int) -> Fraction:
        low, high = min(c, k), max(c, k)
        between = sum(n_c[g] for g in values if low <= g <= high)
        return (between - (n_c[c] + n_c[k]) / 2) ** 2

    observed = sum(count * delta(c, k) for (c, k), count in o.items())
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values)
    return 1 - (n - 1) * observed / expected


# The fixed table's 8 units (item, completion) and the ranks given to each.
TABLE_UNITS = [
    [1, 1, 2], [2, 3, 1], [3, 2, 3], [4, 4, 4],  # item A: c0..c3, from r1, r2, r3
    [1, 2], [1, 1], [3, 4], [4, 3],  # item B: c0..c3, from r1, r2
]  # fmt: skip


def test_the_coincidence_matrix_of_the_fixed_table_is_the_one_worked_out_by_hand():
    # A c0 {1,1,2}, m_u = 3, weight 1/2: (1,1) x2, (1,2) x2, (2,1) x2   -> o11 +1, o12 +1, o21 +1
    # A c1 {2,3,1}: each of the 6 ordered pairs once x 1/2            -> o12, o13, o23 +1/2 each way
    # A c2 {3,2,3}: (3,3) x2, (3,2) x2, (2,3) x2, x 1/2               -> o33 +1, o23 +1, o32 +1
    # A c3 {4,4,4}: (4,4) x6, x 1/2                                   -> o44 +3
    # B c0 {1,2}, m_u = 2, weight 1: o12 +1, o21 +1;  B c1 {1,1}: o11 +2
    # B c2 {3,4} and B c3 {4,3}: o34 +2, o43 +2
    half = Fraction(1, 2)
    assert coincidences_by_hand(TABLE_UNITS) == {
        (1, 1): 3, (1, 2): 2 + half, (2, 1): 2 + half, (1, 3): half, (3, 1): half,
        (2, 3): 1 + half, (3, 2): 1 + half, (3, 3): 1, (3, 4): 2, (4, 3): 2, (4, 4): 3,
    }  # fmt: skip


def test_krippendorffs_alpha_ordinal_on_the_fixed_table_equals_the_hand_computation():
    # Marginals n_c (row sums of o): n1 = 3 + 2.5 + 0.5 = 6, n2 = 2.5 + 1.5 = 4,
    # n3 = 0.5 + 1.5 + 1 + 2 = 5, n4 = 2 + 3 = 5; n = 20 pairable ranks (3*4 + 2*4).
    # Ordinal distances delta_ck = (sum_{g=c..k} n_g - (n_c + n_k)/2)^2:
    #   d12 = (10 - 5)^2 = 25        d13 = (15 - 5.5)^2 = 90.25   d14 = (20 - 5.5)^2 = 210.25
    #   d23 = (9 - 4.5)^2 = 20.25    d24 = (14 - 4.5)^2 = 90.25   d34 = (10 - 5)^2 = 25
    # Observed: sum o_ck d_ck = 2 (2.5*25 + 0.5*90.25 + 1.5*20.25 + 2*25)
    #                         = 2 (62.5 + 45.125 + 30.375 + 50) = 376.
    # Expected: sum n_c n_k d_ck = 2 (6*4*25 + 6*5*90.25 + 6*5*210.25 + 4*5*20.25
    #                                 + 4*5*90.25 + 5*5*25)
    #                            = 2 (600 + 2707.5 + 6307.5 + 405 + 1805 + 625) = 24900.
    # alpha = 1 - (n - 1) * 376 / 24900 = 1 - 7144/24900 = 4439/6225 = 0.71309...
    assert ordinal_alpha_by_hand(TABLE_UNITS) == Fraction(4439, 6225)
    assert krippendorff_alpha_ordinal(TABLE) == exactly(Fraction(4439, 6225))


def test_alpha_is_the_same_whether_raters_are_named_or_listed():
    listed = {key: list(rankings.values()) for key, rankings in TABLE.items()}
    assert krippendorff_alpha_ordinal(listed) == krippendorff_alpha_ordinal(TABLE)
    assert pairwise_agreement(listed) == pairwise_agreement(TABLE)


def test_perfect_agreement_gives_w_one_alpha_one_and_pairwise_one_ties_included():
    same = [[1, 1, 3, 4]] * 3
    # Mid-ranks (1.5, 1.5, 3, 4) x 3: R = (4.5, 4.5, 9, 12), mean 7.5, S = 9 + 9 + 2.25 + 20.25
    # = 40.5; T_j = 6 each: W = 12 * 40.5 / (9*60 - 3*18) = 486 / 486 = 1.
    assert kendalls_w(same) == exactly(Fraction(1))
    assert krippendorff_alpha_ordinal({"x": same, "y": [[2, 1, 4, 3]] * 2}) == exactly(Fraction(1))
    assert pairwise_agreement({"x": same}) == 1


def test_reversed_rankings_give_w_zero_pairwise_zero_and_a_negative_alpha():
    reversed_pair = [[1, 2, 3, 4], [4, 3, 2, 1]]
    # R = (5, 5, 5, 5) = the mean m(n+1)/2, so S = 0 and W = 0.
    assert kendalls_w(reversed_pair) == 0
    assert pairwise_agreement({"x": reversed_pair}) == 0
    # Units {1,4} {2,3} {3,2} {4,1}: o14 = o41 = 2, o23 = o32 = 2; n_c = 2 each, n = 8.
    # d12 = d23 = d34 = (4 - 2)^2 = 4, d13 = d24 = (6 - 2)^2 = 16, d14 = (8 - 2)^2 = 36.
    # Observed 2 (2*36 + 2*4) = 160; expected 2 * 4 * (4 + 16 + 36 + 4 + 16 + 4) = 640.
    # alpha = 1 - 7 * 160 / 640 = -3/4.
    assert ordinal_alpha_by_hand([[1, 4], [2, 3], [3, 2], [4, 1]]) == Fraction(-3, 4)
    assert krippendorff_alpha_ordinal({"x": reversed_pair}) == exactly(Fraction(-3, 4))


def test_fewer_than_two_raters_give_nan_for_every_agreement_figure():
    one_rater = {"A": {"r1": [1, 2, 3]}, "B": {"r2": [3, 2, 1]}}
    assert math.isnan(kendalls_w([[1, 2, 3]]))
    assert math.isnan(kendalls_w([]))
    assert math.isnan(pairwise_agreement(one_rater))
    assert math.isnan(krippendorff_alpha_ordinal(one_rater))
    assert math.isnan(pairwise_agreement({}))
    assert math.isnan(krippendorff_alpha_ordinal({}))


def test_rankings_that_tie_everything_leave_w_and_alpha_undefined():
    all_tied = [[1, 1, 1], [1, 1, 1]]
    # m^2 (n^3 - n) - m sum T = 4 * 24 - 2 * (24 + 24) = 0: no spread to agree on.
    assert math.isnan(kendalls_w(all_tied))
    assert math.isnan(krippendorff_alpha_ordinal({"x": all_tied}))
    assert pairwise_agreement({"x": all_tied}) == 1  # every pair tied by both


def test_rankings_of_one_item_with_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        kendalls_w([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="same length"):
        pairwise_agreement({"x": [[1, 2, 3], [1, 2]]})


def test_consensus_orders_by_mean_rank_and_ties_equal_means():
    # Item A without r3: rank sums (2, 5, 5, 8): c1 and c2 tie for second.
    assert consensus([ITEM_A["r1"], ITEM_A["r2"]]) == [1, 2, 2, 4]
    assert consensus(list(ITEM_A.values())) == [1, 2, 3, 4]  # sums (4, 6, 8, 12)


def test_borda_gives_half_a_point_for_a_tie_and_can_differ_from_the_mean_rank():
    rankings = [[1, 1, 3], [2, 3, 1]]
    # Mean rank: sums (3, 4, 4) -> c0 first, c1 and c2 tied.
    assert consensus(rankings) == [1, 2, 2]
    # Borda: [1,1,3] gives c0 1 + 1/2, c1 1 + 1/2, c2 0; [2,3,1] gives c0 1, c1 0, c2 2.
    # Points (2.5, 1.5, 2): c0, then c2, then c1.
    assert borda(rankings) == [1, 3, 2]


def test_agreement_with_a_reference_counts_the_pairs_ordered_the_same_way():
    assert agreement_with([1, 2, 3, 4], [1, 3, 2, 4]) == exactly(Fraction(5, 6))
    assert agreement_with([1, 1, 3], [1, 2, 3]) == exactly(Fraction(2, 3))  # the tie is not kept


def test_the_model_agrees_on_a_pair_when_the_better_ranked_completion_scores_higher():
    # [1, 1, 3, 4]: c0 and c1 tied (no pair); 5 strictly ordered pairs.
    # (c0,c2): 0.2 < 0.4 no; (c0,c3): 0.2 < 0.3 no; (c1,c2), (c1,c3), (c2,c3) yes.
    assert model_pairwise_accuracy([0.2, 0.8, 0.4, 0.3], [1, 1, 3, 4]) == (3, 5)
    assert model_pairwise_accuracy([0.5, 0.5], [1, 2]) == (0, 1)  # equal scores do not agree
    with pytest.raises(ValueError, match="3 scores"):
        model_pairwise_accuracy([0.1, 0.2, 0.3], [1, 2])


def test_campaign_agreement_sums_up_criteria_raters_gold_and_the_model():
    everyone_agrees = {"r1": [1, 2, 3, 4], "r2": [1, 2, 3, 4], "r3": [1, 2, 3, 4]}

    def judged(overall, harmless):
        return {name: {"overall": overall[name], "harmless": harmless[name]} for name in overall}

    items = {
        "A": ItemJudgements(
            judged(ITEM_A, everyone_agrees),
            gold={"overall": [1, 2, 3, 4]},
            model_scores=[0.9, 0.5, 0.7, 0.1],
        ),
        "B": ItemJudgements(judged(ITEM_B, everyone_agrees), model_scores=[0.2, 0.8, 0.4, 0.3]),
        # Ranked by r1 alone: no W, no coincidences, no consensus; it only counts as r1's item.
        "C": ItemJudgements({"r1": {"overall": [4, 3, 2, 1], "harmless": [1, 1, 3, 4]}}),
    }
    figures = campaign_agreement(items, ["overall", "harmless"])

    overall = figures.criteria["overall"]
    assert overall.pairwise == exactly(Fraction(18, 24))
    assert overall.kendalls_w_items == 2
    assert overall.kendalls_w_mean == exactly((Fraction(7, 9) + Fraction(33, 38)) / 2)
    assert overall.krippendorff_alpha == exactly(Fraction(4439, 6225))
    # Model order on A: c0 (0.9) > c2 (0.7) > c1 (0.5) > c3 (0.1). Against r1 5 of 6 (it swaps
    # c1, c2), r2 6 of 6, r3 4 of 6. On B: r1 3 of 5 (above), r2 [2,1,4,3] 3 of 6.
    assert (overall.model_agreeing_pairs, overall.model_pairs) == (21, 29)
    harmless = figures.criteria["harmless"]
    assert (harmless.pairwise, harmless.kendalls_w_mean, harmless.krippendorff_alpha) == (
        exactly(Fraction(1)),
        exactly(Fraction(1)),
        exactly(Fraction(1)),
    )

    # Leave-one-out consensus, overall: r1 on A vs consensus(r2, r3) = sums (3,4,5,8) -> [1,2,3,4]
    # 6 of 6, on B vs r2 alone 4 of 6; r2 on A vs consensus(r1, r3) = sums (3,3,6,8) ->
    # [1,1,3,4] 4 of 6, on B vs r1 4 of 6; r3 on A vs consensus(r1, r2) = [1,2,2,4] 4 of 6.
    # Harmless adds 6 of 6 per item ranked with another rater.
    r1, r2, r3 = (figures.raters[name] for name in ("r1", "r2", "r3"))
    assert (r1.items, r2.items, r3.items) == (3, 2, 1)
    assert (r1.consensus_agreeing_pairs, r1.consensus_pairs) == (10 + 12, 24)
    assert (r2.consensus_agreeing_pairs, r2.consensus_pairs) == (8 + 12, 24)
    assert (r3.consensus_agreeing_pairs, r3.consensus_pairs) == (4 + 6, 12)
    # Gold (item A, overall only): r1 6 of 6, r2 5 of 6, r3 5 of 6.
    assert [(r.gold_agreeing_pairs, r.gold_pairs) for r in (r1, r2, r3)] == [(6, 6), (5, 6), (5, 6)]
    assert r1.with_gold == 1 and r3.with_consensus == exactly(Fraction(10, 12))


def test_a_rater_alone_on_their_items_and_without_gold_has_no_agreement_figure():
    figures = campaign_agreement({"A": ItemJudgements({"solo": {"overall": [2, 1]}})}, ["overall"])
    solo = figures.raters["solo"]
    assert solo.items == 1
    assert figures.criteria["overall"].kendalls_w_items == 0
    assert math.isnan(solo.with_consensus) and math.isnan(solo.with_gold)
    assert math.isnan(figures.criteria["overall"].model_accuracy)
