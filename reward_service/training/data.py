"""Reading human-feedback data: one record per JSON line (or per row of a JSON array, a Parquet
file or a Hugging Face Hub dataset, read with `datasets`), in one of four formats.

==========  ===========================================================================  =========
format      one line                                                                     detected by
==========  ===========================================================================  =========
rankings    ``{"prompt": P, "completions": [A, B, C], "ranking": [1, 3, 2]}``            ``ranking``
pairs       ``{"prompt": P, "chosen": A, "rejected": B, "margin": 0.5}``                 ``chosen``
labels      ``{"text": T, "label": 1}`` or ``{"prompt": P, "completion": C, "label": 0}``  ``label``
scores      ``{"text": T, "score": 2.3, "ratings": [3, 2, 2]}`` (``ratings`` optional)   ``score``
==========  ===========================================================================  =========

``ranking[i]`` is the rank labellers gave ``completions[i]``, 1 = best, so ``[1, 3, 2]`` says A is
best and B worst. Ties are equal ranks, in "standard competition" form (``[1, 1, 3]``: A and B tie
for best, C is third); a "dense" tie ranking (``[1, 1, 2]``) is read as the same and normalised to
competition form, which is what a :class:`Ranking` always holds. A pairs line's optional
``margin`` (how much better ``chosen`` is, e.g. 0, 1/3, 2/3 or 1 as Llama 2 grades it) is kept
and, where a file has margins, trained on (see ``training.train``). ``prompt`` is optional
everywhere (empty when absent). Other fields are ignored: the rater, criterion, confidence, ties,
time_spent_ms, flags, comment and item_id that `reward-service feedback export` writes, for one.
TRL's conversational form is read too: ``prompt``, ``chosen``, ``rejected`` and ``completion``
may be lists of ``{"role", "content"}`` messages, and a pairs record without ``prompt`` takes the
messages its two sides share as the prompt (as TRL's ``extract_prompt`` does); each becomes its
messages' contents, one per line.
The format is detected from the first record (or named by the caller) and every line must then
follow it; any problem is a :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from reward_service.data_files import read_rows
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
    # ranks[i] is the rank of completions[i]; 1 = best; ties in standard competition form
    ranks: tuple[int, ...]


@dataclass(frozen=True)
class Pair:
    """A completion labellers preferred to another for one prompt (a ``pairs`` line)."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None  # how much better chosen is (TRL's RewardTrainer "margin")


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
    """Every record of a data file: JSON Lines, a JSON array or Parquet file, or a Hugging Face
    Hub dataset id where a network exists (see ``reward_service.data_files``); ``format`` None
    detects it from the first record."""
    source = path
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; known: {', '.join(FORMATS)}")
    records: list[Record] = []
    detected_on = ""
    for where, content in read_rows(source, DataError):
        if not isinstance(content, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(content).__name__}")
        if format is None:
            format = detect_format(content, where=where)
            detected_on = _position(where)
        if detected_on:
            where += f" ({format} format, detected from {detected_on})"
        records.append(parse_record(content, format, where=where))
    if not records:
        raise DataError(
            f"{path}: line 1: the file is empty; expected JSON Lines with one record per line "
            f"in one of the formats {', '.join(FORMATS)}"
        )
    return RecordFile(path, format, records)


def _position(where: str) -> str:
    """ "line 3" from read_rows' "FILE:3" (JSON Lines), "row 3" from its "FILE row 3"."""
    line = where.rpartition(":")[2]
    return f"line {line}" if line.isdigit() else f"row {where.rpartition(' row ')[2]}"


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
    if format == "pairs" and _is_conversation(content.get("chosen")):
        return _conversational_pair(content, where)
    prompt = _optional_text(content, "prompt", where)
    if format == "rankings":
        completions = _text_list(content, "completions", where)
        ranks = _competition_ranks(completions, _rank_list(content, "ranking", where), where)
        return Ranking(prompt, tuple(completions), tuple(ranks))
    if format == "pairs":
        return Pair(
            prompt,
            text_field(content, "chosen", where),
            text_field(content, "rejected", where),
            _margin(content, where),
        )
    completion = _completion(content, where)
    if format == "labels":
        label = _field(content, "label", where)
        if label not in (0, 1) or isinstance(label, float):
            raise DataError(f"{where}: label must be 0 or 1, got {label!r}")
        return Labelled(prompt, completion, int(label))
    score = finite_number(_field(content, "score", where), "score", where)
    ratings = content.get("ratings")
    if ratings is not None:
        if not isinstance(ratings, list) or not ratings:
            raise DataError(f"{where}: ratings must be a non-empty list of numbers")
        ratings = tuple(finite_number(value, "ratings", where) for value in ratings)
    return Scored(prompt, completion, score, ratings)


def json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file; a DataError naming
    ``file:line`` for a line that is not a JSON object, or a file that can't be read."""
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


def text_field(content: dict[str, Any], name: str, where: str) -> str:
    """``content[name]``, a string, or a DataError naming ``where``."""
    value = _field(content, name, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: '{name}' must be a string, got {type(value).__name__}")
    return value


def _optional_text(content: dict[str, Any], name: str, where: str) -> str:
    """A string field, or a conversation (TRL's conversational format) as its text; "" if
    absent."""
    value = content.get(name)
    if value is None:
        return ""
    if _is_conversation(value):
        return conversation_text(_messages(value, name, where))
    return text_field(content, name, where)


def _completion(content: dict[str, Any], where: str) -> str:
    if "text" in content:
        return text_field(content, "text", where)
    if "completion" in content:
        return _optional_text(content, "completion", where)
    raise DataError(f"{where}: missing field 'text' (or 'completion')")


def _margin(content: dict[str, Any], where: str) -> float | None:
    margin = content.get("margin")
    return None if margin is None else finite_number(margin, "margin", where)


# TRL's conversational preference data: `chosen` and `rejected` are lists of messages, with the
# prompt either explicit (`prompt`, a list of messages) or implicit (the messages `chosen` and
# `rejected` share, as in trl-lib/ultrafeedback_binarized). A BERT-class reward model reads plain
# text, so each side becomes its messages' contents, one per line, roles left out: the same text
# the service's markup stripping makes of a chat policy's query (model.markup), so a model is
# trained on what it is later sent.
def _is_conversation(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _messages(value: Any, name: str, where: str) -> list[dict[str, str]]:
    if not _is_conversation(value) or not all(
        isinstance(message.get("role"), str) and isinstance(message.get("content"), str)
        for message in value
    ):
        raise DataError(
            f"{where}: '{name}' must be a string or a list of "
            '{"role": ..., "content": ...} messages with string contents'
        )
    return [{"role": message["role"], "content": message["content"]} for message in value]


def conversation_text(messages: list[dict[str, str]]) -> str:
    """A conversation as the plain text a reward model reads: each message's content, one a line."""
    return "\n".join(message["content"].strip() for message in messages)


def _conversational_pair(content: dict[str, Any], where: str) -> Pair:
    chosen = _messages(content.get("chosen"), "chosen", where)
    rejected = _messages(content.get("rejected"), "rejected", where)
    if content.get("prompt") is not None:
        prompt = _messages(content["prompt"], "prompt", where)
    else:  # implicit prompt: the messages both sides begin with (TRL's extract_prompt)
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not chosen or not rejected:
        raise DataError(
            f"{where}: conversational 'chosen' and 'rejected' must each end in at least one "
            "message of their own after the prompt; here one holds nothing but the prompt"
        )
    return Pair(
        conversation_text(prompt),
        conversation_text(chosen),
        conversation_text(rejected),
        _margin(content, where),
    )


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


def _competition_ranks(completions: list[str], ranks: list[int], where: str) -> list[int]:
    """``ranks`` checked, in standard competition form: as given if they are (``[1, 1, 3]``),
    normalised if they are dense (``[1, 1, 2]`` -> ``[1, 1, 3]``); anything else is refused."""
    if len(completions) < 2:
        raise DataError(f"{where}: a ranking needs at least 2 completions, got {len(completions)}")
    if len(ranks) != len(completions):
        raise DataError(
            f"{where}: {len(completions)} completions but {len(ranks)} ranks in 'ranking'"
        )
    competition = competition_ranks(ranks)
    is_dense = sorted(set(ranks)) == list(range(1, len(set(ranks)) + 1))
    if ranks != competition and not is_dense:
        raise DataError(
            f"{where}: ranking {ranks} is not a ranking of {len(ranks)} completions: give each "
            "its rank, 1 = best; tied completions share a rank and the next rank skips as many "
            f"(standard competition, e.g. [1, 1, 3]), or counts on (dense, e.g. [1, 1, 2])"
        )
    return competition


def competition_ranks(ranks: list[int] | tuple[int, ...]) -> list[int]:
    """Each rank as 1 + the number of completions ranked strictly better: standard competition
    form ("1224"), whatever numbers ordered them."""
    return [1 + sum(other < rank for other in ranks) for rank in ranks]


def finite_number(value: Any, name: str, where: str) -> float:
    """``value`` as a float, if it is a finite number, or a DataError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{where}: '{name}' must be a finite number, got {value!r}")
    return float(value)


def write_records(path: Path, records: Sequence[Record]) -> None:
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
        if record.margin is not None:
            content["margin"] = record.margin
    elif isinstance(record, Labelled):
        content.update(text=record.completion, label=record.label)
    else:
        content.update(text=record.completion, score=record.score)
        if record.ratings is not None:
            content["ratings"] = list(record.ratings)
    return content
