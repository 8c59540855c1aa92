"""Training on what the ranking app exports: rankings with ties and extra fields, pairs with a
margin, and a train/held-out split that keeps each prompt on one side."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import build_tiny_classifier

from reward_service.errors import DataError
from reward_service.training.config import TrainConfig
from reward_service.training.data import (
    Pair,
    Ranking,
    competition_ranks,
    read_records,
    write_records,
)
from reward_service.training.evaluate import held_out_set
from reward_service.training.rules import labels_from, ranking_to_labels, ranking_to_pairs
from reward_service.training.train import split_by_prompt, train


def jsonl(tmp_path: Path, *lines: dict, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def labelled(ranking: Ranking, middle: str = "drop") -> dict[str, int]:
    return {example.completion: example.label for example in ranking_to_labels(ranking, middle)}


# --- reading -------------------------------------------------------------------------------------


def test_an_exported_judgement_line_reads_as_a_ranking_with_its_extra_fields_ignored(tmp_path):
    line = {
        "prompt": "p", "completions": ["a", "b", "c", "d"], "ranking": [1, 1, 3, 4],
        "criterion": "helpful", "rater": "ana", "confidence": 3, "ties": True,
        "time_spent_ms": 5123, "flags": {"2": ["truncated"]}, "comment": "close call",
        "item_id": 7,
    }  # fmt: skip
    assert read_records(jsonl(tmp_path, line)).records == [
        Ranking("p", ("a", "b", "c", "d"), (1, 1, 3, 4))
    ]


def test_dense_tie_rankings_are_normalised_to_standard_competition_ranks(tmp_path):
    path = jsonl(
        tmp_path,
        {"completions": ["a", "b", "c"], "ranking": [1, 1, 2]},
        {"completions": ["a", "b", "c", "d"], "ranking": [2, 1, 2, 3]},
        {"completions": ["a", "b", "c", "d"], "ranking": [1, 2, 2, 4]},  # already competition
        {"completions": ["a", "b"], "ranking": [1, 1]},
    )
    assert [record.ranks for record in read_records(path).records] == [
        (1, 1, 3),
        (2, 1, 2, 4),
        (1, 2, 2, 4),
        (1, 1),
    ]


@pytest.mark.parametrize("ranks", [[1, 3, 3], [2, 2], [0, 1], [1, 4, 2]])
def test_ranks_no_tie_explains_are_refused_naming_the_line(tmp_path, ranks):
    path = jsonl(
        tmp_path,
        {"completions": ["a", "b"], "ranking": [1, 2]},
        {"completions": ["a", "b", "c"][: len(ranks)], "ranking": ranks},
    )
    with pytest.raises(DataError, match=rf"data.jsonl:2 .*ranking \[{ranks[0]}, .*not a ranking"):
        read_records(path)


def test_a_pairs_margin_is_kept_optional_and_written_back(tmp_path):
    path = jsonl(
        tmp_path,
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 0.6667, "rater": "ana"},
        {"prompt": "p", "chosen": "a", "rejected": "c"},
    )
    records = read_records(path).records
    assert records == [Pair("p", "a", "b", 0.6667), Pair("p", "a", "c")]
    write_records(tmp_path / "again.jsonl", records)
    assert read_records(tmp_path / "again.jsonl").records == records
    with pytest.raises(DataError, match=r":1 .*'margin' must be a finite number"):
        read_records(jsonl(tmp_path, {"chosen": "a", "rejected": "b", "margin": "big"}))


# --- rules ---------------------------------------------------------------------------------------


def test_tied_completions_make_no_pair_and_every_untied_pair_one():
    tied = Ranking("p", ("a", "b", "c", "d"), (1, 1, 3, 4))
    assert [(pair.chosen, pair.rejected) for pair in ranking_to_pairs(tied)] == [
        ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("c", "d"),
    ]  # fmt: skip
    assert ranking_to_pairs(Ranking("p", ("a", "b", "c"), (1, 1, 1))) == []
    # The held-out figures count the same pairs.
    assert len(held_out_set([tied]).better) == 5


def test_binary_labels_the_whole_best_group_positive_and_the_whole_worst_group_negative():
    assert labelled(Ranking("", ("a", "b", "c", "d"), (1, 1, 3, 3))) == {
        "a": 1, "b": 1, "c": 0, "d": 0,
    }  # fmt: skip
    # The worst group's rank is not K when it is a tie: [1, 2, 2] is best, then two worst.
    assert labelled(Ranking("", ("a", "b", "c"), (2, 1, 2))) == {"a": 0, "b": 1, "c": 0}


def test_a_ranking_that_is_all_one_tie_gives_no_binary_example_whatever_the_middle_rule():
    all_tied = Ranking("", ("a", "b", "c"), (1, 1, 1))
    for middle in ("drop", "positive", "negative", "split"):
        assert ranking_to_labels(all_tied, middle) == []
    assert labels_from([all_tied, Pair("", "x", "y")]) == labels_from([Pair("", "x", "y")])


def test_tied_middle_groups_follow_the_middle_rule_split_by_the_places_they_span():
    five = Ranking("", ("a", "b", "c", "d", "e"), (1, 2, 2, 4, 5))
    assert labelled(five, "drop") == {"a": 1, "e": 0}
    assert labelled(five, "positive") == {"a": 1, "b": 1, "c": 1, "d": 1, "e": 0}
    assert labelled(five, "negative") == {"a": 1, "b": 0, "c": 0, "d": 0, "e": 0}
    # b and c span places 2 and 3 of 5 (mean 2.5: the better half); d is at 4.
    assert labelled(five, "split") == {"a": 1, "b": 1, "c": 1, "d": 0, "e": 0}
    # In four, places 2 and 3 average to 2.5, the exact middle: left out.
    four = Ranking("", ("a", "b", "c", "d"), (1, 2, 2, 4))
    assert labelled(four, "split") == {"a": 1, "d": 0}


# --- the split -----------------------------------------------------------------------------------


def rater_rankings(prompts: int, raters: int, k: int = 3) -> list[Ranking]:
    """Each prompt's k completions ranked by several raters, as an export writes them."""
    rng = random.Random(0)
    records = []
    for prompt in range(prompts):
        completions = tuple(f"completion {prompt}.{index}" for index in range(k))
        for _ in range(raters):
            ranks = competition_ranks([rng.randrange(k) for _ in range(k)])  # ties now and then
            records.append(Ranking(f"prompt {prompt}", completions, tuple(ranks)))
    return records


@pytest.mark.parametrize("seed", range(5))
def test_no_prompt_lands_on_both_sides_of_the_split(seed):
    records = rater_rankings(prompts=40, raters=3)
    # Uneven groups too: some prompts judged once, some five times.
    records += [Ranking(f"extra {i}", ("x", "y"), (1, 2)) for i in range(7) for _ in range(i % 5)]
    training, held_out = split_by_prompt(records, eval_fraction=0.2, seed=seed)
    assert not {r.prompt for r in training} & {r.prompt for r in held_out}
    assert sorted(map(repr, training + held_out)) == sorted(map(repr, records))
    target = round(0.2 * len(records))
    assert target <= len(held_out) < target + 5  # whole groups of at most 5, until the target
    assert split_by_prompt(records, 0.2, seed) == (training, held_out)


def test_records_without_a_prompt_are_each_a_group_of_their_own():
    records = [Ranking("", (f"a{i}", f"b{i}"), (1, 2)) for i in range(20)]
    training, held_out = split_by_prompt(records, eval_fraction=0.1, seed=0)
    assert (len(training), len(held_out)) == (18, 2)


def test_one_prompt_is_too_few_to_hold_out():
    with pytest.raises(ValueError, match="too few to hold some prompts out"):
        split_by_prompt(rater_rankings(prompts=1, raters=4), eval_fraction=0.5, seed=0)


# --- training ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A 2-layer BERT with one output (hidden 32, seeded): a pairwise reward model's shape."""
    return build_tiny_classifier(tmp_path_factory.mktemp("ties") / "base", labels=["REWARD"])


def tiny_config(base: Path, **overrides) -> TrainConfig:
    settings = dict(
        objective="pairwise", base=base, epochs=1, learning_rate=2e-3, batch_size=8,
        max_length=32, warmup_ratio=0.0, seed=0,
    )  # fmt: skip
    return TrainConfig(**{**settings, **overrides})


def test_training_holds_out_whole_prompts_with_every_raters_ranking_of_them(tiny_base, tmp_path):
    # 10 prompts, each ranked by 3 raters; a tenth of 30 records is one whole prompt: its 3
    # completions, and the 3 raters' pairs (ties give none).
    records = rater_rankings(prompts=10, raters=3)
    write_records(tmp_path / "rankings.jsonl", records)
    result = train(tmp_path / "rankings.jsonl", tmp_path / "rm", tiny_config(tiny_base))
    held_out = split_by_prompt(records, 0.1, 0)[1]
    assert {record.prompt for record in held_out} == {held_out[0].prompt}
    assert (result.held_out_items, result.train_records) == (3, 27)
    assert result.held_out_pairs == sum(len(ranking_to_pairs(r)) for r in held_out)


def test_pairs_margins_reach_the_loss_and_a_margin_of_0_is_the_plain_loss(tiny_base, tmp_path):
    rng = random.Random(1)
    texts = [
        (f"prompt {i}", f"good {rng.random():.3f}", f"bad {rng.random():.3f}") for i in range(48)
    ]

    def rewards_after_training(margin: float | None, name: str) -> dict[str, float]:
        write_records(tmp_path / f"{name}.jsonl", [Pair(*text, margin) for text in texts])
        # The held-out rewards' mean and std: another loss, other weights, other rewards.
        return train(
            tmp_path / f"{name}.jsonl", tmp_path / name, tiny_config(tiny_base)
        ).normalization

    plain = rewards_after_training(None, "plain")
    assert rewards_after_training(0.0, "zero") == plain
    assert rewards_after_training(3.0, "wide") != plain
