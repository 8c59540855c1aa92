"""The default model's data: the VADER movie snippets, split once and for all by snippet."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reward_service.errors import DataError
from reward_service.training.data import read_records
from reward_service.training.vader import read_movie_snippets, split_of, write_vader_data


@pytest.fixture(scope="module")
def snippets():
    return read_movie_snippets()


def test_every_movie_snippet_is_read_with_its_mean_and_at_least_15_raters(snippets):
    assert len(snippets) == 10_605
    assert all(len(snippet.ratings) >= 15 for snippet in snippets)
    first = snippets[0]
    assert first.id == "1" and first.text.startswith("The Rock is destined")
    assert first.mean == pytest.approx(sum(first.ratings) / len(first.ratings), abs=1e-6)


def test_the_split_is_fixed_by_snippet_id(snippets):
    counts = Counter(split_of(snippet.id) for snippet in snippets)
    assert counts == {"train": 8538, "validation": 1062, "test": 1005}
    # A pure function of the id (sha256 of "movie-<id>" mod 100): no seed, no file order.
    assert [split_of(snippet_id) for snippet_id in (4, 5, 8, 10)] == [
        "train",
        "test",
        "validation",
        "test",
    ]


def test_written_files_keep_the_splits_apart_and_rank_by_the_raters_mean(tmp_path):
    files = write_vader_data(tmp_path, ranking_size=4, seed=0)
    texts = {
        split: {record.completion for record in read_records(files[f"{split}.scores"]).records}
        for split in ("train", "validation", "test")
    }
    # By snippet id; the data holds two texts twice (under other ids, with other ratings), and
    # those are the only texts two splits share.
    shared = (texts["train"] & texts["test"]) | (texts["validation"] & texts["test"])
    shared |= texts["train"] & texts["validation"]
    assert len(shared) <= 2
    means = {r.completion: r.score for r in read_records(files["train.scores"]).records}
    for ranking in read_records(files["train.rankings"]).records[:50]:
        assert len(ranking.completions) == 4
        best_first = [c for _, c in sorted(zip(ranking.ranks, ranking.completions, strict=True))]
        assert [means[c] for c in best_first] == sorted(
            (means[c] for c in best_first), reverse=True
        )
    assert len(read_records(files["train.pairs"]).records) == 6 * 2134 + 1  # K=4: 6 pairs each
    # The out-of-domain test files: the study's whole Amazon and NYT corpora, each rater kept
    # (20 per snippet), and no text of theirs in any movie split.
    movie_texts = texts["train"] | texts["validation"] | texts["test"]
    for corpus, size in (("amazon", 3708), ("nyt", 5190)):
        records = read_records(files[f"{corpus}.scores"]).records
        assert len(records) == size
        assert min(len(record.ratings) for record in records) == 20
        assert all(-4 <= record.score <= 4 for record in records)
        assert not {record.completion for record in records} & movie_texts


def test_unlabelled_texts_for_distillation_never_include_a_rated_snippets_text():
    """The tweets' and movie dialogues' texts a teacher scores: the test and out-of-domain
    snippets stay out of every training run, texts included (the dialogues repeat over a
    thousand of the rated texts word for word)."""
    from reward_service.training.vader import (
        CORPUS_FILES,
        MIN_UNLABELLED_WORDS,
        read_snippets,
        read_unlabelled_texts,
    )

    texts = read_unlabelled_texts()
    rated = {s.text.strip().lower() for corpus in CORPUS_FILES for s in read_snippets(corpus)}
    assert len(texts) > 50_000
    assert not rated & {text.lower() for text in texts}
    assert len({text.lower() for text in texts}) == len(texts)
    assert min(len(text.split()) for text in texts) >= MIN_UNLABELLED_WORDS


def test_the_shipped_teacher_rewards_hold_every_text_the_default_model_is_distilled_on(
    snippets, tmp_path
):
    """`make serve` distils the default from the file, without the teacher: it must hold a
    reward for each train and validation snippet, each variant and each unlabelled text the
    recipe draws, and none for a test snippet."""
    from reward_service.training.distill import read_teacher_rewards
    from reward_service.training.recipe import DEFAULT_DISTILLATION, unlabelled_inputs

    files = write_vader_data(tmp_path)
    rated = [
        record
        for split in ("train", "validation")
        for record in read_records(files[f"{split}.scores"]).records
    ]
    texts = [r.completion for r in rated] + unlabelled_inputs(rated, DEFAULT_DISTILLATION)
    assert len(texts) > 2 * len(rated)
    rewards = read_teacher_rewards(DEFAULT_DISTILLATION.teacher_rewards, texts)
    assert np.isfinite(rewards).all() and rewards.std() > 0.5
    test_texts = [r.completion for r in read_records(files["test.scores"]).records]
    # (One test snippet's text is also a training snippet's, under another id: see vader.py.)
    unseen = len(set(test_texts) - set(texts))
    assert unseen >= len(test_texts) - 2
    with pytest.raises(DataError, match=f"no teacher reward for {unseen} of"):
        read_teacher_rewards(DEFAULT_DISTILLATION.teacher_rewards, test_texts)
