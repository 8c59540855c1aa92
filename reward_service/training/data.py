"""Reading human-feedback JSONL files: one record per line, in one of four formats.

==========  ===========================================================================  =========
format      one line                                                                     detected by
==========  ===========================================================================  =========
rankings    ``{"prompt": P, "completions": [A, B, C], "ranking": [1, 3, 2]}``            ``ranking``
pairs       ``{"prompt": P, "chosen": A, "rejected": B}``                                ``chosen``
labels      ``{"text": T, "label": 1}`` or ``{"prompt": P, "completion": C, "label": 0}``  ``label``
scores      ``{"text": T, "score": 2.3, "ratings": [3, 2, 2]}`` (``ratings`` optional)   ``score``
==========  ===========================================================================  =========

``ranking[i]`` is the rank labellers gave ``completions[i]``, 1 = best, so ``[1, 3, 2]`` says A is
best and B worst. ``prompt`` is optional everywhere (empty when absent). The format is detected from
the first record (or named by the caller) and every line must then follow it; any problem is a
:class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from reward_service.errors import DataError

Format = Literal["rankings", "pairs", "labels", "scores"]
FORMATS: tuple[Format, ...] = get_args(Format)

# The field whose presence names the format, checked in this order.
_FORMAT_MARKERS: tuple[tuple[str, Format], ...] = (
    ("ranking", "rankings"),
    ("chosen", "pairs"),
    ("label", "labels"),
    ("score", "scores"),
)


@dataclass(frozen=True)
class Ranking:
    """One prompt's completions with the rank labellers gave each (a ``rankings`` line)."""

    prompt: str
    completions: tuple[str, ...]
    ranks: tuple[int, ...]  # ranks[i] is the rank of completions[i]; 1 = best


@dataclass(frozen=True)
class Pair:
    """A completion labellers preferred to another for one prompt (a ``pairs`` line)."""

    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class Labelled:
    """A completion judged good (1) or bad (0) (a ``labels`` line)."""

    prompt: str
    completion: str
    label: int  # 1 = positive (good), 0 = negative


@dataclass(frozen=True)
class Scored:
    """A completion with a numeric human score (a ``scores`` line)."""

    prompt: str
    completion: str
    score: float
    ratings: tuple[float, ...] | None = None  # each rater's score, where the data has them


Record = Ranking | Pair | Labelled | Scored


@dataclass(frozen=True)
class RecordFile:
    """A file's records, all of one format."""

    path: Path
    format: Format
    records: list[Record]


def read_records(path: Path | str, format: Format | None = None) -> RecordFile:
    """Every record of a JSONL file; ``format`` None detects it from the first record."""
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; known: {', '.join(FORMATS)}")
    records: list[Record] = []
    detected_on = 0
    for line_number, content in _json_lines(path):
        if format is None:
            format = detect_format(content, where=f"{path}:{line_number}")
            detected_on = line_number
        where = f"{path}:{line_number}"
        if detected_on:
            where += f" ({format} format, detected from line {detected_on})"
        records.append(parse_record(content, format, where=where))
    if not records:
        raise DataError(
            f"{path}: line 1: the file is empty; expected JSON Lines with one record per line "
            f"in one of the formats {', '.join(FORMATS)}"
        )
    return RecordFile(path, format, records)


def detect_format(content: dict[str, Any], *, where: str) -> Format:
    for field, format in _FORMAT_MARKERS:
        if field in content:
            return format
    raise DataError(
        f"{where}: cannot tell the format: a record needs one of the fields "
        f"'ranking' (rankings), 'chosen' (pairs), 'label' (labels) or 'score' (scores); "
        f"found {sorted(content)}"
    )


def parse_record(content: dict[str, Any], format: Format, *, where: str) -> Record:
    prompt = _optional_text(content, "prompt", where)
    if format == "rankings":
        completions = _text_list(content, "completions", where)
        ranks = _rank_list(content, "ranking", where)
        _check_ranking(completions, ranks, where)
        return Ranking(prompt, tuple(completions), tuple(ranks))
    if format == "pairs":
        return Pair(prompt, _text(content, "chosen", where), _text(content, "rejected", where))
    completion = _completion(content, where)
    if format == "labels":
        label = _field(content, "label", where)
        if label not in (0, 1) or isinstance(label, float):
            raise DataError(f"{where}: label must be 0 or 1, got {label!r}")
        return Labelled(prompt, completion, int(label))
    score = _number(_field(content, "score", where), "score", where)
    ratings = content.get("ratings")
    if ratings is not None:
        if not isinstance(ratings, list) or not ratings:
            raise DataError(f"{where}: ratings must be a non-empty list of numbers")
        ratings = tuple(_number(value, "ratings", where) for value in ratings)
    return Scored(prompt, completion, score, ratings)


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    with handle:
        try:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    content = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(
                        f"{path}:{line_number}: not valid JSON (column {error.colno}: {error.msg})"
                    ) from None
                if not isinstance(content, dict):
                    kind = type(content).__name__
                    raise DataError(f"{path}:{line_number}: expected a JSON object, got {kind}")
                yield line_number, content
        except UnicodeDecodeError as error:
            raise DataError(f"{path}: not UTF-8 text ({error.reason})") from None


def _field(content: dict[str, Any], name: str, where: str) -> Any:
    if name not in content:
        raise DataError(f"{where}: missing field '{name}'")
    return content[name]


def _text(content: dict[str, Any], name: str, where: str) -> str:
    value = _field(content, name, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: '{name}' must be a string, got {type(value).__name__}")
    return value


def _optional_text(content: dict[str, Any], name: str, where: str) -> str:
    return _text(content, name, where) if content.get(name) is not None else ""


def _completion(content: dict[str, Any], where: str) -> str:
    if "text" in content:
        return _text(content, "text", where)
    if "completion" in content:
        return _text(content, "completion", where)
    raise DataError(f"{where}: missing field 'text' (or 'completion')")


def _text_list(content: dict[str, Any], name: str, where: str) -> list[str]:
    value = _field(content, name, where)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(f"{where}: '{name}' must be a list of strings")
    return value


def _rank_list(content: dict[str, Any], name: str, where: str) -> list[int]:
    value = _field(content, name, where)
    if not isinstance(value, list) or not all(
        isinstance(item, int) and not isinstance(item, bool) for item in value
    ):
        raise DataError(f"{where}: '{name}' must be a list of integers (1 = best)")
    return value


def _check_ranking(completions: list[str], ranks: list[int], where: str) -> None:
    if len(completions) < 2:
        raise DataError(f"{where}: a ranking needs at least 2 completions, got {len(completions)}")
    if len(ranks) != len(completions):
        raise DataError(
            f"{where}: {len(completions)} completions but {len(ranks)} ranks in 'ranking'"
        )
    if sorted(ranks) != list(range(1, len(ranks) + 1)):
        raise DataError(
            f"{where}: ranking {ranks} is not a permutation of 1..{len(ranks)} "
            f"(each completion gets a distinct rank, 1 = best)"
        )


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: '{name}' must be a finite number, got {value!r}")
    return float(value)


def write_records(path: Path, records: list[Record]) -> None:
    """The inverse of :func:`read_records` (prompts left out when empty)."""
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(_as_json(record), ensure_ascii=False) + "\n")


def _as_json(record: Record) -> dict[str, Any]:
    content: dict[str, Any] = {"prompt": record.prompt} if record.prompt else {}
    if isinstance(record, Ranking):
        content.update(completions=list(record.completions), ranking=list(record.ranks))
    elif isinstance(record, Pair):
        content.update(chosen=record.chosen, rejected=record.rejected)
    elif isinstance(record, Labelled):
        content.update(text=record.completion, label=record.label)
    else:
        content.update(text=record.completion, score=record.score)
        if record.ratings is not None:
            content["ratings"] = list(record.ratings)
    return content
