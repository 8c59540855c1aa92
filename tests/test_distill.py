"""Distillation's targets: the raters' means blended with a teacher's rewards on the raters' scale
(reward_service.training.distill)."""

from __future__ import annotations

import numpy as np
import pytest

from reward_service.errors import DataError
from reward_service.training.data import Scored
from reward_service.training.distill import (
    distillation_targets,
    read_teacher_rewards,
    write_teacher_rewards,
)

RATED = [Scored("", f"snippet {n}", score) for n, score in enumerate([-3.0, -1.0, 0.5, 2.0, 3.5])]
HUMAN = np.array([r.score for r in RATED])
# The teacher's served rewards: its own scale (mean 0, std 1), not the raters' -4..+4.
ON_RATED = np.array([-1.2, -0.7, 0.1, 0.6, 1.3])
UNLABELLED = ["a line of dialogue", "a tweet"]
ON_UNLABELLED = np.array([0.1, 2.0])
REWARDS = np.concatenate([ON_RATED, ON_UNLABELLED])


def targets(weight: float) -> np.ndarray:
    records = distillation_targets(RATED, UNLABELLED, REWARDS, teacher_weight=weight)
    assert [r.completion for r in records] == [r.completion for r in RATED] + UNLABELLED
    return np.array([r.score for r in records])


def test_teacher_weight_0_keeps_the_raters_means():
    assert targets(0.0)[:5] == pytest.approx(HUMAN)


def test_teacher_weight_1_takes_the_teachers_rewards_on_the_raters_scale():
    """The least-squares line from the teacher's rewards to the human scores maps them; with an
    intercept its fitted values keep the human mean."""
    slope, intercept = np.polyfit(ON_RATED, HUMAN, 1)
    by_teacher = targets(1.0)
    assert by_teacher[:5] == pytest.approx(slope * ON_RATED + intercept)
    assert by_teacher[:5].mean() == pytest.approx(HUMAN.mean())
    assert slope > 1.0  # the teacher's scale is narrower than the raters': really rescaled


def test_unlabelled_texts_are_mapped_by_the_same_line_whatever_the_weight():
    """The third rated snippet and the first unlabelled text got the same teacher reward."""
    for weight in (0.0, 0.5, 1.0):
        assert targets(weight)[5] == pytest.approx(targets(1.0)[2])


def test_in_between_the_target_is_the_weighted_mean_of_raters_and_teacher():
    assert targets(0.25)[:5] == pytest.approx(0.75 * HUMAN + 0.25 * targets(1.0)[:5])


def test_a_weight_outside_0_1_or_a_reward_count_that_does_not_match_is_refused():
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        distillation_targets(RATED, UNLABELLED, REWARDS, teacher_weight=1.5)
    with pytest.raises(ValueError, match="6 teacher rewards for 5 rated records and 2"):
        distillation_targets(RATED, UNLABELLED, REWARDS[:6], teacher_weight=0.5)


def test_a_rewards_file_gives_back_each_texts_reward_and_refuses_a_text_it_lacks(tmp_path):
    texts = [r.completion for r in RATED] + UNLABELLED
    path = tmp_path / "teacher.jsonl.gz"
    write_teacher_rewards(path, texts, REWARDS)
    # In any order, to the file's 5 decimals.
    assert read_teacher_rewards(path, texts[::-1]) == pytest.approx(REWARDS[::-1], abs=1e-5)
    with pytest.raises(DataError, match=r"no teacher reward for 1 of the 3 texts .*'unseen'"):
        read_teacher_rewards(path, ["unseen", *texts[:2]])


def test_a_variant_is_a_span_of_the_text_or_the_text_with_words_dropped():
    import random

    from reward_service.training.distill import augmented

    text = "a gorgeous , moving and often very funny film about two brothers and their father"
    words = text.split()
    rng = random.Random(0)
    spans = dropped = 0
    for _ in range(200):
        variant = augmented(text, rng).split()
        assert 3 <= len(variant) <= len(words)
        if " ".join(variant) in text:
            spans += 1
            assert len(variant) >= round(0.6 * len(words))
        else:  # the text's words in order, some left out
            dropped += 1
            remaining = iter(words)
            assert all(word in remaining for word in variant)
    assert spans > 50 and dropped > 50
    assert augmented("too short here", rng) == "too short here"


def test_augmented_texts_are_seeded_and_never_repeat_a_text_or_each_other():
    from reward_service.training.distill import augmented_texts

    texts = [f"review number {n} of a film that was rather good" for n in range(50)] + ["a b"]
    variants = augmented_texts(texts, seed=3)
    assert variants == augmented_texts(texts, seed=3)
    assert variants != augmented_texts(texts, seed=4)
    assert len(set(variants)) == len(variants) and not set(variants) & set(texts)
    assert 40 <= len(variants) <= 50  # "a b" is too short to vary


def test_more_variants_per_text_extend_fewer_so_one_rewards_file_serves_both():
    from reward_service.training.distill import augmented_texts

    texts = [f"review number {n} of a film that was rather good in places" for n in range(40)]
    one, three = augmented_texts(texts, seed=5), augmented_texts(texts, seed=5, per_text=3)
    assert three[: len(one)] == one
    assert len(one) < len(three) <= 3 * len(texts)
    assert len(set(three)) == len(three) and not set(three) & set(texts)
    assert augmented_texts(texts, seed=5, per_text=0) == []
