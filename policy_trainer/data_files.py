"""Rows of a data file (prompts for PPO, demonstrations for SFT), each with where it came from
for error messages: JSON Lines read line by line (so an error names its line), and a Parquet
file or a JSON array (as TRL's datasets often come) read with Hugging Face `datasets`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def table_format(path: Path, text: str | None) -> str | None:
    """How `datasets` reads `path` ("parquet", "json" for a JSON array), or None for a file read
    line by line. `text`: the file's text, where it is text."""
    if path.suffix.lower() == ".parquet":
        return "parquet"
    if path.suffix.lower() == ".json" and text is not None and text.lstrip().startswith("["):
        return "json"
    return None


def read_rows(path: Path, error: type[ValueError]) -> Iterator[tuple[str, Any]]:
    """(where, row) for each row: "FILE:LINE" and the line's JSON value for JSON Lines (blank
    lines skipped), "FILE row N" (from 1) and the row as a dict for Parquet and JSON arrays.
    An unreadable file raises `error` (the caller's kind) naming the file and line."""
    text = None
    if path.suffix.lower() != ".parquet":
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as problem:
            raise error(f"cannot read {path}: {problem}") from None
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

    reader = Dataset.from_parquet if kind == "parquet" else Dataset.from_json
    try:
        # In memory: a prompt or demonstration file is small, and no cache is left behind.
        table = reader(str(path), keep_in_memory=True)
    except Exception as problem:  # datasets' and pyarrow's own errors, of many kinds
        raise error(f"cannot read {path} with datasets: {problem}") from None
    for number, row in enumerate(table.to_list(), start=1):
        yield f"{path} row {number}", row
