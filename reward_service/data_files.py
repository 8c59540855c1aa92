"""Rows of a data file (reward-model training data, prompts for PPO, demonstrations for SFT),
each with where it came from for error messages: JSON Lines read line by line (so an error names
its line); a Parquet file or a JSON array (as TRL's datasets often come) read with Hugging Face
`datasets`; and, where a network exists, a dataset on the Hugging Face Hub named by its id
(`trl-lib/ultrafeedback_binarized`, or `ID:SPLIT` for a split other than "train")."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# A Hub dataset id ("name" or "owner/name"), optionally ":split". Anything else that is not a
# local file is reported as a missing file.
HUB_DATASET_PATTERN = re.compile(r"^(?P<id>[A-Za-z0-9][\w.\-]*/[\w.\-]+)(?::(?P<split>[\w.\-]+))?$")
DEFAULT_HUB_SPLIT = "train"


def table_format(path: Path, text: str | None) -> str | None:
    """How `datasets` reads `path` ("parquet", "json" for a JSON array), or None for a file read
    line by line. `text`: the file's text, where it is text."""
    if path.suffix.lower() == ".parquet":
        return "parquet"
    if path.suffix.lower() == ".json" and text is not None and text.lstrip().startswith("["):
        return "json"
    return None


def hub_dataset(source: Path | str) -> tuple[str, str] | None:
    """(id, split) when `source` is no local file but reads as a Hub dataset id, else None."""
    text = str(source)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")):
        return None
    match = HUB_DATASET_PATTERN.match(text)
    if match is None:
        return None
    return match["id"], match["split"] or DEFAULT_HUB_SPLIT


def read_rows(source: Path | str, error: type[ValueError]) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row: "FILE:LINE" and the line's JSON value for JSON Lines (blank
    lines skipped), "FILE row N" (from 1) and the row as a dict for Parquet, JSON arrays and Hub
    datasets. An unreadable file raises `error` (the caller's kind) naming the file and line."""
    hub = hub_dataset(source)
    if hub is not None:
        yield from _hub_rows(*hub, error)
        return
    path = Path(source).expanduser()
    text = None
    if path.suffix.lower() != ".parquet":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as problem:
            raise error(f"cannot read {path}: {problem}") from None
        except OSError as problem:
            raise error(f"cannot read {path}: {problem.strerror or problem}") from None
    kind = table_format(path, text)
    if kind is not None:
        yield from _table_rows(path, kind, error)
        return
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{number}", json.loads(line)
        except json.JSONDecodeError as problem:
            raise error(f"{path}:{number}: not valid JSON ({problem.msg})") from None


def _table_rows(
    path: Path, kind: str, error: type[ValueError]
) -> Iterator[tuple[str, dict[str, Any]]]:
    from datasets import Dataset

    if not path.is_file():
        raise error(f"cannot read {path}: no such file")
    reader = Dataset.from_parquet if kind == "parquet" else Dataset.from_json
    try:
        # In memory: a prompt or demonstration file is small, and no cache is left behind.
        table = reader(str(path), keep_in_memory=True)
    except Exception as problem:  # datasets' and pyarrow's own errors, of many kinds
        raise error(f"cannot read {path} with datasets: {problem}") from None
    for number, row in enumerate(table.to_list(), start=1):
        yield f"{path} row {number}", row


def _hub_rows(
    dataset_id: str, split: str, error: type[ValueError]
) -> Iterator[tuple[str, dict[str, Any]]]:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        raise error(
            f"{dataset_id!r} is not a local file, and as a Hugging Face Hub dataset it can't be "
            "fetched while offline mode is on (HF_HUB_OFFLINE=1): pass a local JSONL, JSON or "
            "Parquet file, or fetch the dataset where a network exists"
        )
    from datasets import load_dataset

    try:
        table = load_dataset(dataset_id, split=split)
    except Exception as problem:  # the hub client and datasets raise many types
        first_line = (str(problem).strip().splitlines() or [type(problem).__name__])[0]
        raise error(
            f"{dataset_id!r} is not a local file, and loading split {split!r} of it from the "
            f"Hugging Face Hub failed ({first_line}); on a machine without a network set "
            "HF_HUB_OFFLINE=1 and pass a local JSONL, JSON or Parquet file"
        ) from None
    for number, row in enumerate(table, start=1):
        yield f"{dataset_id}:{split} row {number}", row
