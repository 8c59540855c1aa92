"""Distillation: a larger reward model's scores become a smaller one's training targets.

Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"), for a regression head as in DistilBERT's and TinyBERT's task-specific stage: the
student is fit by MSE to the teacher's score on unlabelled text the teacher scored, so it sees
many more inputs than people rated; on the rated snippets its target blends the raters' mean and
the teacher's score. MSE to the blend ``(1 - w) * human + w * teacher`` equals the weighted sum
``(1 - w) * MSE(human) + w * MSE(teacher)`` up to a constant, so the whole recipe stays one
scores file trained with the ``regression`` objective.

The teacher's rewards come from its folder (``score_folder``) or from a file of them
(``write_teacher_rewards``), one per text, keyed by a hash of the text: the file lets a recipe
distil without the teacher at hand, and refuses texts it does not hold.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reward_service.errors import DataError
from reward_service.training.data import Scored


def distillation_targets(
    rated: Sequence[Scored],
    unlabelled: Sequence[str],
    teacher_rewards: np.ndarray,
    *,
    teacher_weight: float,
) -> list[Scored]:
    """The student's training records: each rated record with the blended target, then each
    unlabelled text with the teacher's score. ``teacher_rewards``: the teacher's rewards on the
    rated records, then on the unlabelled texts.

    The teacher's rewards are put on the raters' scale by the least-squares line from its rewards
    on the rated records to their human scores (served rewards are normalised to mean 0, std 1,
    not to the raters' -4..+4), so human and teacher targets share one scale before the
    regression objective z-scores them.
    """
    if not 0.0 <= teacher_weight <= 1.0:
        raise ValueError(f"the teacher's weight must lie in [0, 1], not {teacher_weight}")
    if len(teacher_rewards) != len(rated) + len(unlabelled):
        raise ValueError(
            f"{len(teacher_rewards)} teacher rewards for {len(rated)} rated records and "
            f"{len(unlabelled)} unlabelled texts"
        )
    on_rated, on_unlabelled = teacher_rewards[: len(rated)], teacher_rewards[len(rated) :]
    human = np.asarray([r.score for r in rated])
    slope, intercept = np.polyfit(on_rated, human, 1)
    blended = (1.0 - teacher_weight) * human + teacher_weight * (slope * on_rated + intercept)
    records = [
        Scored(r.prompt, r.completion, float(target))
        for r, target in zip(rated, blended, strict=True)
    ]
    records += [
        Scored("", text, float(slope * reward + intercept))
        for text, reward in zip(unlabelled, on_unlabelled, strict=True)
    ]
    return records


def sample_texts(texts: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` of ``texts`` (all of them when fewer), drawn seeded, in a seeded order."""
    if count >= len(texts):
        return list(texts)
    return random.Random(seed).sample(list(texts), count)


def augmented(text: str, rng: random.Random) -> str:
    """A variant of a rated text for the teacher to score, as TinyBERT's task distillation
    augments its data (Jiao et al. 2020): in-domain inputs no one rated. Half the time a
    contiguous span of 60-90% of the words (a review's clause keeps its sentiment, or part of it),
    otherwise the text with each word dropped with probability 0.15. Texts of under 4 words come
    back whole."""
    words = text.split()
    if len(words) < 4:
        return text
    if rng.random() < 0.5:
        length = max(3, round(len(words) * rng.uniform(0.6, 0.9)))
        start = rng.randrange(len(words) - length + 1)
        return " ".join(words[start : start + length])
    kept = [word for word in words if rng.random() >= 0.15]
    return " ".join(kept if len(kept) >= 3 else words[:3])


def augmented_texts(texts: Sequence[str], seed: int, per_text: int = 1) -> list[str]:
    """Up to ``per_text`` variants of each text (``augmented``), seeded, made in rounds of one per
    text: the first ``k`` rounds are the same whatever ``per_text`` is, so a teacher's rewards for
    more variants hold those for fewer. A variant equal to its text, or to one already made, is
    left out."""
    rng = random.Random(seed)
    seen = set(texts)
    variants = []
    for _ in range(per_text):
        for text in texts:
            variant = augmented(text, rng)
            if variant not in seen:
                seen.add(variant)
                variants.append(variant)
    return variants


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_teacher_rewards(path: Path, texts: Sequence[str], rewards: np.ndarray) -> None:
    """One JSON line per text, ``{"key": text_key(text), "reward": r}``, gzipped: the rewards
    a teacher gave, without the texts (they ship in their own packages)."""
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for text, reward in zip(texts, rewards, strict=True):
            handle.write(json.dumps({"key": text_key(text), "reward": round(float(reward), 5)}))
            handle.write("\n")


def read_teacher_rewards(path: Path, texts: Sequence[str]) -> np.ndarray:
    """The rewards ``path`` holds for ``texts``, in their order; a text it lacks is an error."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        by_key = {line["key"]: line["reward"] for line in map(json.loads, handle)}
    missing = [text for text in texts if text_key(text) not in by_key]
    if missing:
        raise DataError(
            f"{path} holds no teacher reward for {len(missing)} of the {len(texts)} texts "
            f"(the first: {missing[0][:60]!r}): it was written for other data; score them "
            "with --teacher DIR instead"
        )
    return np.asarray([by_key[text_key(text)] for text in texts])
