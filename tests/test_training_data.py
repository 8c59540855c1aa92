"""Reading rankings / pairs / labels / scores files: format detection and line-numbered errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


# TRL's formats (https://huggingface.co/docs/trl/dataset_formats): conversational preference
# data, JSON arrays and Parquet files, and Hub ids.
def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_a_conversational_pair_with_an_explicit_prompt_reads_as_its_contents(tmp_path):
    record = {
        "prompt": [{"role": "system", "content": "Be kind."}, user("Review the film.")],
        "chosen": [assistant("A warm, funny film.")],
        "rejected": [assistant("Awful.")],
        "margin": 0.5,
    }
    assert read_records(jsonl(tmp_path, record)).records == [
        Pair("Be kind.\nReview the film.", "A warm, funny film.", "Awful.", 0.5)
    ]


def test_a_conversational_pair_without_a_prompt_takes_the_shared_messages_as_its_prompt(
    tmp_path,
):
    # As in trl-lib/ultrafeedback_binarized: each side is the whole conversation.
    shared = [user("Hi"), assistant("Hello."), user("Review the film.")]
    record = {
        "chosen": [*shared, assistant("Warm and funny.")],
        "rejected": [*shared, assistant("Awful."), user("Why?"), assistant("It is.")],
    }
    assert read_records(jsonl(tmp_path, record)).records == [
        Pair("Hi\nHello.\nReview the film.", "Warm and funny.", "Awful.\nWhy?\nIt is.")
    ]


def test_conversational_labels_and_scores_read_prompt_and_completion_as_text(tmp_path):
    # TRL's unpaired preference format: a boolean label.
    path = jsonl(
        tmp_path,
        {"prompt": [user("Review it.")], "completion": [assistant("Fine.")], "label": True},
    )
    assert read_records(path).records == [Labelled("Review it.", "Fine.", 1)]


def test_bad_conversations_name_their_line_and_field(tmp_path):
    same = [user("p"), assistant("a")]
    with pytest.raises(DataError, match=r":1 .*one holds nothing but the prompt"):
        read_records(jsonl(tmp_path, {"chosen": same, "rejected": same}))
    with pytest.raises(DataError, match=r":1 .*'rejected' must be a string or a list of"):
        read_records(jsonl(tmp_path, {"chosen": same, "rejected": [{"role": "user"}]}))
    with pytest.raises(DataError, match=r":2 .*'prompt' must be a string or a list of"):
        read_records(
            jsonl(
                tmp_path,
                {"prompt": "p", "chosen": "a", "rejected": "b"},
                {"prompt": [{"content": 3}], "chosen": [assistant("a")], "rejected": []},
            )
        )


def test_json_arrays_and_parquet_files_read_like_json_lines(tmp_path):
    import pandas

    rows = [
        {"prompt": [user("p")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
        {"prompt": [user("q")], "chosen": [assistant("c")], "rejected": [assistant("d")]},
    ]
    expected = [Pair("p", "a", "b"), Pair("q", "c", "d")]
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps(rows))
    assert read_records(array).records == expected
    parquet = tmp_path / "pairs.parquet"
    pandas.DataFrame(rows).to_parquet(parquet)
    assert read_records(parquet).records == expected
    unfinished = {**rows[1], "rejected": [{"role": "assistant", "content": None}]}
    pandas.DataFrame([rows[0], unfinished]).to_parquet(parquet)
    with pytest.raises(
        DataError, match=r"pairs.parquet row 2 \(pairs format, detected from row 1\): 'rejected'"
    ):
        read_records(parquet)


def test_a_hub_dataset_id_offline_fails_saying_why(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        DataError,
        match=r"'trl-lib/ultrafeedback_binarized' is not a local file.*"
        r"offline mode is on \(HF_HUB_OFFLINE=1\)",
    ):
        read_records("trl-lib/ultrafeedback_binarized")


def test_a_hub_dataset_id_that_cannot_be_fetched_fails_saying_why(tmp_path):
    # Online mode against an endpoint that refuses the connection at once; in a fresh process,
    # as the Hub client reads its endpoint when imported. The error names the id and split and
    # says what to do without a network.
    script = (
        "from reward_service.training.data import read_records\n"
        "from reward_service.errors import DataError\n"
        "try:\n"
        "    read_records('someone/prefs:test')\n"
        "except DataError as error:\n"
        "    print(error)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert re.search(
        r"'someone/prefs' is not a local file, and loading split 'test' of it from the Hugging "
        r"Face Hub failed \(.+\); on a machine without a network set HF_HUB_OFFLINE=1",
        result.stdout,
    ), result.stdout + result.stderr
