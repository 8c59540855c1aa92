"""How a human ranking becomes binary labels and (chosen, rejected) pairs."""

from __future__ import annotations

import pytest

from reward_service.training.data import Labelled, Pair, Ranking, Scored
from reward_service.training.rules import (
    labels_from,
    pair_to_ranking,
    pairs_from,
    ranking_to_labels,
    ranking_to_pairs,
    rankings_from_scores,
)

# "b" ranked best, "c" second, "a" third, "d" worst.
FOUR = Ranking("prompt", ("a", "b", "c", "d"), (3, 1, 2, 4))
THREE = Ranking("prompt", ("x", "y", "z"), (2, 3, 1))


def labelled(ranking: Ranking, middle: str) -> dict[str, int]:
    return {example.completion: example.label for example in ranking_to_labels(ranking, middle)}


def test_best_rank_is_positive_and_worst_negative_and_the_middle_is_dropped_by_default():
    assert labelled(FOUR, "drop") == {"b": 1, "d": 0}
    assert ranking_to_labels(FOUR) == ranking_to_labels(FOUR, "drop")


def test_middle_ranks_can_all_be_positive_or_all_negative():
    assert labelled(FOUR, "positive") == {"a": 1, "b": 1, "c": 1, "d": 0}
    assert labelled(FOUR, "negative") == {"a": 0, "b": 1, "c": 0, "d": 0}


def test_split_labels_the_better_half_positive_and_leaves_out_the_exact_middle_of_odd_k():
    assert labelled(FOUR, "split") == {"a": 0, "b": 1, "c": 1, "d": 0}
    assert labelled(THREE, "split") == {"z": 1, "y": 0}  # x, rank 2 of 3, is the middle


def test_a_ranking_of_two_is_one_positive_and_one_negative_whatever_the_middle_rule():
    two = Ranking("", ("worse", "better"), (2, 1))
    for middle in ("drop", "positive", "negative", "split"):
        assert labelled(two, middle) == {"better": 1, "worse": 0}


def test_labels_keep_the_prompt_and_come_out_in_completion_order():
    assert ranking_to_labels(FOUR) == [Labelled("prompt", "b", 1), Labelled("prompt", "d", 0)]


def test_an_unknown_middle_rule_is_refused():
    with pytest.raises(ValueError, match="middle must be one of"):
        ranking_to_labels(FOUR, "random")


def test_a_ranking_of_k_becomes_every_one_of_its_k_choose_2_pairs_best_chosen_first():
    assert [(p.chosen, p.rejected) for p in ranking_to_pairs(FOUR)] == [
        ("b", "c"), ("b", "a"), ("b", "d"), ("c", "a"), ("c", "d"), ("a", "d"),
    ]  # fmt: skip
    assert all(pair.prompt == "prompt" for pair in ranking_to_pairs(FOUR))


def test_a_pair_is_a_ranking_of_two_with_the_chosen_first():
    pair = Pair("p", "good", "bad")
    assert pair_to_ranking(pair) == Ranking("p", ("good", "bad"), (1, 2))
    assert ranking_to_pairs(pair_to_ranking(pair)) == [pair]


def test_binary_examples_come_from_rankings_pairs_or_labels_but_not_scores():
    records = [THREE, Pair("", "good", "bad"), Labelled("", "fine", 1)]
    assert labels_from(records) == [
        Labelled("prompt", "y", 0), Labelled("prompt", "z", 1),
        Labelled("", "good", 1), Labelled("", "bad", 0), Labelled("", "fine", 1),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="binary objective needs rankings, pairs or labels"):
        labels_from([Scored("", "text", 1.0)])


def test_pairwise_examples_come_from_rankings_or_pairs_only():
    assert pairs_from([THREE, Pair("", "good", "bad")]) == [
        Pair("prompt", "z", "x"), Pair("prompt", "z", "y"), Pair("prompt", "x", "y"),
        Pair("", "good", "bad"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="pairwise objective needs rankings or pairs"):
        pairs_from([Labelled("", "text", 1)])


def test_scored_items_become_seeded_rankings_of_k_ordered_by_score():
    items = [Scored("", f"item{score}", float(score)) for score in range(10)]
    rankings = rankings_from_scores(items, k=4, seed=0)
    assert [len(r.completions) for r in rankings] == [4, 4, 2]
    for ranking in rankings:
        by_rank = sorted(zip(ranking.ranks, ranking.completions, strict=True))
        scores = [float(text.removeprefix("item")) for _, text in by_rank]
        assert scores == sorted(scores, reverse=True)  # rank 1 = the highest score
    assert rankings == rankings_from_scores(items, k=4, seed=0)
    assert rankings != rankings_from_scores(items, k=4, seed=1)


def test_a_last_group_of_one_item_makes_no_ranking():
    items = [Scored("", str(i), float(i)) for i in range(5)]
    assert [len(r.completions) for r in rankings_from_scores(items, k=2, seed=0)] == [2, 2]
