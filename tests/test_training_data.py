"""Reading rankings / pairs / labels / scores files: format detection and line-numbered errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reward_service.errors import DataError
from reward_service.training.data import (
    Labelled,
    Pair,
    Ranking,
    Scored,
    read_records,
    write_records,
)


def jsonl(tmp_path: Path, *lines: object, name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    texts = (line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text("".join(text + "\n" for text in texts))
    return path


def test_each_format_is_detected_from_its_marker_field(tmp_path):
    cases = {
        "rankings": {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [1, 3, 2]},
        "pairs": {"prompt": "p", "chosen": "a", "rejected": "b"},
        "labels": {"text": "t", "label": 1},
        "scores": {"text": "t", "score": -1.5},
    }
    for expected, record in cases.items():
        assert read_records(jsonl(tmp_path, record, name=f"{expected}.jsonl")).format == expected


def test_records_are_read_with_ranks_per_completion_and_an_optional_prompt(tmp_path):
    path = jsonl(
        tmp_path,
        {"prompt": "p", "completions": ["a", "b", "c"], "ranking": [1, 3, 2]},
        {"completions": ["x", "y"], "ranking": [2, 1]},
    )
    assert read_records(path).records == [
        Ranking("p", ("a", "b", "c"), (1, 3, 2)),
        Ranking("", ("x", "y"), (2, 1)),
    ]


def test_labels_take_text_or_prompt_and_completion(tmp_path):
    path = jsonl(
        tmp_path, {"text": "t", "label": 1}, {"prompt": "p", "completion": "c", "label": 0}
    )
    assert read_records(path).records == [Labelled("", "t", 1), Labelled("p", "c", 0)]


def test_scores_may_carry_each_raters_score(tmp_path):
    path = jsonl(
        tmp_path, {"text": "t", "score": 1.5, "ratings": [1, 2]}, {"text": "u", "score": 0}
    )
    assert read_records(path).records == [Scored("", "t", 1.5, (1.0, 2.0)), Scored("", "u", 0.0)]


def test_blank_lines_are_skipped_and_line_numbers_count_them(tmp_path):
    path = jsonl(tmp_path, {"chosen": "a", "rejected": "b"}, "", {"chosen": "c"})
    with pytest.raises(DataError, match=r"data.jsonl:3 .*missing field 'rejected'"):
        read_records(path)


def test_a_named_format_is_used_instead_of_detection(tmp_path):
    path = jsonl(tmp_path, {"chosen": "a", "rejected": "b", "text": "t", "label": 1})
    assert read_records(path).records == [Pair("", "a", "b")]
    assert read_records(path, "labels").records == [Labelled("", "t", 1)]


def test_a_ranking_that_is_not_a_ranking_names_its_line(tmp_path):
    # Ties are allowed ([1, 1, 3], or dense [1, 1, 2]); [1, 3, 3] skips a rank no tie explains.
    path = jsonl(
        tmp_path,
        {"completions": ["a", "b"], "ranking": [1, 2]},
        {"completions": ["a", "b", "c"], "ranking": [1, 3, 3]},
    )
    with pytest.raises(DataError, match=r":2 .*ranking \[1, 3, 3\] is not a ranking of 3"):
        read_records(path)


def test_a_ranking_with_a_rank_count_unlike_its_completions_is_refused(tmp_path):
    path = jsonl(tmp_path, {"completions": ["a", "b", "c"], "ranking": [1, 2]})
    with pytest.raises(DataError, match=r":1 .*3 completions but 2 ranks"):
        read_records(path)


def test_a_missing_field_names_the_line_the_field_and_the_detected_format(tmp_path):
    path = jsonl(tmp_path, {"text": "a", "label": 1}, {"text": "b", "label": 0}, {"label": 1})
    with pytest.raises(DataError) as error:
        read_records(path)
    message = str(error.value)
    assert "data.jsonl:3" in message
    assert "labels format, detected from line 1" in message
    assert "missing field 'text'" in message


def test_an_empty_file_says_so_with_line_1(tmp_path):
    for content in ("", "\n\n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        with pytest.raises(DataError, match=r"empty.jsonl: line 1: the file is empty"):
            read_records(path)


def test_invalid_json_and_unknown_records_name_their_line(tmp_path):
    with pytest.raises(DataError, match=r":2: not valid JSON"):
        read_records(jsonl(tmp_path, {"text": "a", "score": 1}, "{oops"))
    with pytest.raises(DataError, match=r":1: cannot tell the format.*'ranking'.*'chosen'"):
        read_records(jsonl(tmp_path, {"question": "a"}))
    with pytest.raises(DataError, match=r":1: expected a JSON object, got list"):
        read_records(jsonl(tmp_path, [1, 2]))


def test_labels_must_be_0_or_1_and_scores_finite_numbers(tmp_path):
    with pytest.raises(DataError, match=r":1 .*label must be 0 or 1, got 2"):
        read_records(jsonl(tmp_path, {"text": "a", "label": 2}))
    with pytest.raises(DataError, match=r":1 .*'score' must be a finite number"):
        read_records(jsonl(tmp_path, {"text": "a", "score": "high"}))


def test_a_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_records(tmp_path / "absent.jsonl")


def test_written_records_read_back_the_same(tmp_path):
    records = [Ranking("p", ("a", "b"), (2, 1)), Ranking("", ("c", "d", "e"), (1, 2, 3))]
    path = tmp_path / "out.jsonl"
    write_records(path, records)
    assert read_records(path).records == records
    scored = [Scored("", "t", 1.5, (1.0, 2.0))]
    write_records(path, scored)
    assert read_records(path).records == scored
