"""A Label Studio JSON export of a ranking project, read into campaign items and judgements.

Pure: JSON in, dataclasses out; ``cli`` stores them. The format, as Label Studio writes it
(sources in HumanSignal/label-studio):

- The export ("JSON" in the Export dialog, not "JSON-MIN") is a list of tasks
  ``{"id", "data": {...}, "annotations": [...], ...}``; each annotation has ``completed_by``, a
  user id or, expanded, ``{"id", "email", "first_name", "last_name"}``
  (label_studio/data_export/serializers.py), ``result`` (a list of one result per control tag),
  ``was_cancelled`` (the annotator skipped the task) and ``lead_time`` (seconds spent)
  (docs/source/includes/task_format.md).
- ``<List name="answers" value="$items"/>`` shows the task data field ``items``, a list of
  ``{"id", "title", "body"}``; ids are compared as strings
  (web/libs/editor/src/tags/object/List.js).
- ``<Ranker name="rank" toName="answers"/>`` saves ``{"type": "ranker", "from_name": "rank",
  "value": {"ranker": {"rank": [ids, best first]}}}``. With ``<Bucket name=...>`` children the
  value holds one list per bucket, ``{"ranker": {"best": [...], "ok": [...]}}``, in the order the
  annotator dragged them; items in no bucket stay in the ``"_"`` column (or are left out), unless
  a bucket has ``default="true"`` (web/libs/editor/src/tags/control/Ranker.jsx,
  web/libs/editor/src/components/Ranker/Ranker.tsx, and the "LLM Ranker" template,
  label_studio/annotation_templates/generative-ai/llm-ranker/config.yml).
- ``<Pairwise name="comparison" toName="answer1,answer2"/>`` saves ``{"type": "pairwise",
  "from_name": "comparison", "to_name": "comparison", "value": {"selected": "left" | "right"}}``
  (web/libs/editor/src/tags/control/Pairwise.js; the "Human Preference collection for RLHF"
  template, .../generative-ai/human-feedback-collection/config.yml, shows ``$prompt``,
  ``$answer1`` and ``$answer2``).
- ``<TextArea>`` saves ``{"type": "textarea", "value": {"text": [lines]}}``: read as the comment.

Raters: nothing but a display name is stored about a rater, so an annotator becomes the rater
named ``"first_name last_name"`` where the export has either name, else ``"label-studio user
<id>"``; the email is never read. Two annotators of one export with the same names are told apart
by their id: ``"Ann Lee (label-studio user 3)"``. A name that is already a rater's (someone
invited under that name) is that rater.

The rule for buckets (the export does not say which bucket is better, the project's config does):
one bucket (or the plain Ranker) is a ranking, best first. Several buckets need their order, best
first (``bucket_order``); the ranking is the buckets' lists one after the other. Within a bucket the
annotator's order ranks the items, or, with ``ties_within_buckets``, a bucket is one tie (buckets
used as grades). Items in no bucket (the ``"_"`` column) come last, tied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# Ranker.jsx: the column of items not moved to any bucket.
UNPLACED_COLUMN = "_"


class LabelStudioFormatError(ValueError):
    """The export is not a Label Studio ranking export we can read; the message names the task."""


@dataclass(frozen=True)
class LabelStudioOptions:
    """What the export does not say and the project's labelling config does."""

    prompt_field: str = "prompt"
    # The List's data field; None: the one data field that holds a list of {"id": ...} objects.
    items_field: str | None = None
    # The Ranker or Pairwise tag to read when an annotation holds several.
    from_name: str | None = None
    # Several buckets: their names, best first.
    bucket_order: Sequence[str] | None = None
    ties_within_buckets: bool = False
    # The two data fields a Pairwise tag compares (left, right).
    pairwise_fields: tuple[str, str] = ("answer1", "answer2")


@dataclass(frozen=True)
class ImportedItem:
    prompt: str
    completions: list[str]
    source: dict[str, Any]  # where it came from (task id, item ids and titles); never shown


@dataclass(frozen=True)
class ImportedJudgement:
    item_index: int  # into LabelStudioImport.items
    rater: str  # the annotator's display name (see the module), never their email
    ranks: list[int] | None  # competition ranks in the item's completion order; None if skipped
    skipped: bool
    comment: str
    time_spent_ms: int | None  # lead_time x 1000, where the export has it


@dataclass(frozen=True)
class LabelStudioImport:
    items: list[ImportedItem]
    judgements: list[ImportedJudgement]


def read_export(
    path: str | Path, options: LabelStudioOptions = LabelStudioOptions()
) -> LabelStudioImport:
    """Read a Label Studio JSON export file."""
    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LabelStudioFormatError(f"{path} is not JSON: {error}") from error
    return parse_export(tasks, options)


def parse_export(
    tasks: object, options: LabelStudioOptions = LabelStudioOptions()
) -> LabelStudioImport:
    """Items and judgements from a parsed Label Studio JSON export (a list of tasks), in task
    order; a task's annotations become its judgements, in their order."""
    if not isinstance(tasks, list):
        raise LabelStudioFormatError(
            f"a Label Studio JSON export is a list of tasks, got {type(tasks).__name__}"
        )
    items: list[ImportedItem] = []
    judgements: list[ImportedJudgement] = []
    annotators: list[_Annotator] = []  # each judgement's
    for position, task in enumerate(tasks):
        task_name = _task_name(task, position)
        try:
            item, list_ids = _read_item(task, options)
            for annotation in _annotations(task):
                if list_ids is None:
                    ranks = _pairwise_ranks(annotation, options)
                else:
                    ranks = _ranker_ranks(annotation, list_ids, options)
                annotator = _annotator(annotation)
                judgements.append(_judgement(annotation, len(items), annotator.name, ranks))
                annotators.append(annotator)
        except LabelStudioFormatError as error:
            raise LabelStudioFormatError(f"Label Studio task {task_name}: {error}") from None
        items.append(item)
    return LabelStudioImport(items, _told_apart(judgements, annotators))


def _task_name(task: object, position: int) -> str:
    if isinstance(task, dict) and "id" in task:
        return str(task["id"])
    return f"#{position} (no id)"


def _annotations(task: dict[str, Any]) -> list[dict[str, Any]]:
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise LabelStudioFormatError("annotations must be a list of objects")
    return annotations


def _read_item(task: object, options: LabelStudioOptions) -> tuple[ImportedItem, list[str] | None]:
    """The task's item, and its List item ids (None: a Pairwise item, left then right)."""
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise LabelStudioFormatError('a task is an object with a "data" object')
    data = task["data"]
    prompt = data.get(options.prompt_field)
    if not isinstance(prompt, str):
        raise LabelStudioFormatError(
            f'no text in data field "{options.prompt_field}" for the prompt '
            f"(data fields: {', '.join(sorted(data))}); say which with prompt_field"
        )
    source = {"label_studio_task_id": task.get("id"), "label_studio_project": task.get("project")}
    items_field = options.items_field or _list_field(data)
    if items_field is not None:
        ids, completions, titles = _list_items(data, items_field)
        return ImportedItem(prompt, completions, {**source, "item_ids": ids, "titles": titles}), ids
    left, right = options.pairwise_fields
    if isinstance(data.get(left), str) and isinstance(data.get(right), str):
        item = ImportedItem(prompt, [data[left], data[right]], {**source, "fields": [left, right]})
        return item, None
    raise LabelStudioFormatError(
        f"no List items (a data field holding a list of {{id, body}} objects; say which with "
        f'items_field) and no "{left}"/"{right}" texts for a Pairwise tag'
    )


def _list_field(data: dict[str, Any]) -> str | None:
    """The data field a List tag shows: the one holding a non-empty list of {"id": ...}."""
    fields = [
        name
        for name, value in data.items()
        if isinstance(value, list)
        and value
        and all(isinstance(entry, dict) and "id" in entry for entry in value)
    ]
    if len(fields) > 1:
        raise LabelStudioFormatError(
            f"several data fields look like List items ({', '.join(fields)}); "
            "say which with items_field"
        )
    return fields[0] if fields else None


def _list_items(data: dict[str, Any], field: str) -> tuple[list[str], list[str], list[str]]:
    entries = data.get(field)
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise LabelStudioFormatError(f'data field "{field}" is not a list of List items')
    ids, completions, titles = [], [], []
    for entry in entries:
        text = entry.get("body", entry.get("html"))
        if "id" not in entry or not isinstance(text, str):
            raise LabelStudioFormatError(f"a List item needs an id and a body text, got {entry}")
        ids.append(str(entry["id"]))  # List.js: "ids should be strings"
        completions.append(text)
        titles.append(str(entry.get("title", "")))
    if len(set(ids)) != len(ids):
        raise LabelStudioFormatError(f"List item ids repeat: {ids}")
    if len(ids) < 2:
        raise LabelStudioFormatError(f"a ranking needs at least 2 List items, got {len(ids)}")
    return ids, completions, titles


def _judgement(
    annotation: dict[str, Any], item_index: int, rater: str, ranks: list[int] | None
) -> ImportedJudgement:
    skipped = bool(annotation.get("was_cancelled", False))
    return ImportedJudgement(
        item_index=item_index,
        rater=rater,
        ranks=None if skipped else ranks,
        skipped=skipped,
        comment=_comment(annotation),
        time_spent_ms=_time_spent_ms(annotation),
    )


def _results(annotation: dict[str, Any]) -> list[dict[str, Any]]:
    results = annotation.get("result", [])
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise LabelStudioFormatError(f"annotation {annotation.get('id')}: result is not a list")
    return results


def _one_result(
    annotation: dict[str, Any], result_type: str, options: LabelStudioOptions
) -> dict[str, Any] | None:
    """The annotation's one result of that type (None if it was skipped and has none)."""
    found = [
        result
        for result in _results(annotation)
        if result.get("type") == result_type
        and (options.from_name is None or result.get("from_name") == options.from_name)
    ]
    name = f"annotation {annotation.get('id')}"
    if len(found) > 1:
        names = ", ".join(str(result.get("from_name")) for result in found)
        raise LabelStudioFormatError(
            f"{name} has several {result_type} results ({names}); say which with from_name"
        )
    if not found:
        if annotation.get("was_cancelled", False):
            return None
        raise LabelStudioFormatError(f"{name} has no {result_type} result")
    if not isinstance(found[0].get("value"), dict):
        raise LabelStudioFormatError(f"{name}: the {result_type} result has no value object")
    return found[0]


def _ranker_ranks(
    annotation: dict[str, Any], ids: list[str], options: LabelStudioOptions
) -> list[int] | None:
    result = _one_result(annotation, "ranker", options)
    if result is None:
        return None
    name = f"annotation {annotation.get('id')}"
    columns = result["value"].get("ranker")
    if not isinstance(columns, dict) or not all(
        isinstance(column, list) for column in columns.values()
    ):
        raise LabelStudioFormatError(f'{name}: a Ranker value is {{"ranker": {{name: [ids]}}}}')
    buckets = [bucket for bucket in columns if bucket != UNPLACED_COLUMN]
    if len(buckets) > 1:
        order = list(options.bucket_order or [])
        unknown = [bucket for bucket in buckets if bucket not in order]
        if unknown:
            raise LabelStudioFormatError(
                f"{name}: the Ranker has buckets {', '.join(buckets)}; say their order, best "
                f"first, with bucket_order (not in it: {', '.join(unknown)})"
            )
        buckets = [bucket for bucket in order if bucket in columns]
    # A plain Ranker (no Bucket) saves one column named after itself: always a strict order.
    ties = options.ties_within_buckets and list(columns) != [result.get("from_name")]
    groups: list[list[str]] = []
    for bucket in buckets:
        bucket_ids = [str(item_id) for item_id in columns[bucket]]
        groups.extend([bucket_ids] if ties else [[item_id] for item_id in bucket_ids])
    placed = [item_id for group in groups for item_id in group]
    strangers = sorted(set(placed) - set(ids))
    if strangers:
        raise LabelStudioFormatError(f"{name}: the Ranker names ids not in the List: {strangers}")
    if len(set(placed)) != len(placed):
        raise LabelStudioFormatError(f"{name}: the Ranker places an item twice: {placed}")
    unplaced = [item_id for item_id in ids if item_id not in placed]
    if unplaced:
        groups.append(unplaced)
    return _competition_ranks(groups, ids)


def _pairwise_ranks(annotation: dict[str, Any], options: LabelStudioOptions) -> list[int] | None:
    result = _one_result(annotation, "pairwise", options)
    if result is None:
        return None
    selected = result["value"].get("selected")
    if selected not in ("left", "right"):
        raise LabelStudioFormatError(
            f'annotation {annotation.get("id")}: Pairwise "selected" is "left" or "right", '
            f"got {selected!r}"
        )
    return [1, 2] if selected == "left" else [2, 1]


def _competition_ranks(groups: list[list[str]], ids: list[str]) -> list[int]:
    """Tie groups, best first -> each id's standard competition rank, in the List's order."""
    rank_of: dict[str, int] = {}
    rank = 1
    for group in groups:
        for item_id in group:
            rank_of[item_id] = rank
        rank += len(group)
    return [rank_of[item_id] for item_id in ids]


@dataclass(frozen=True)
class _Annotator:
    """Who made an annotation: their Label Studio user id and their display name."""

    user_id: str
    name: str


def _annotator(annotation: dict[str, Any]) -> _Annotator:
    """The annotator's id and display name (first and last name, else "label-studio user ID");
    ``completed_by`` is a user id or, expanded, a user object."""
    completed_by = annotation.get("completed_by")
    names: list[str] = []
    if isinstance(completed_by, dict):
        names = [
            completed_by[field].strip()
            for field in ("first_name", "last_name")
            if isinstance(completed_by.get(field), str) and completed_by[field].strip()
        ]
        completed_by = completed_by.get("id")
    if isinstance(completed_by, bool) or not isinstance(completed_by, int | str):
        raise LabelStudioFormatError(
            f"annotation {annotation.get('id')}: completed_by is not a user id or a user object "
            "with an id"
        )
    user_id = str(completed_by)
    return _Annotator(user_id, " ".join(names) or _user_name(user_id))


def _user_name(user_id: str) -> str:
    return f"label-studio user {user_id}"


def _told_apart(
    judgements: list[ImportedJudgement], annotators: list[_Annotator]
) -> list[ImportedJudgement]:
    """The judgements, with a display name that several annotators share followed by each
    one's user id: two people of the same name stay two raters."""
    ids_by_name: dict[str, set[str]] = {}
    for annotator in annotators:
        ids_by_name.setdefault(annotator.name, set()).add(annotator.user_id)
    return [
        replace(judgement, rater=f"{annotator.name} ({_user_name(annotator.user_id)})")
        if len(ids_by_name[annotator.name]) > 1
        else judgement
        for judgement, annotator in zip(judgements, annotators, strict=True)
    ]


def _comment(annotation: dict[str, Any]) -> str:
    lines: list[str] = []
    for result in _results(annotation):
        value = result.get("value")
        if result.get("type") == "textarea" and isinstance(value, dict):
            lines.extend(line for line in value.get("text", []) if isinstance(line, str))
    return "\n".join(lines)


def _time_spent_ms(annotation: dict[str, Any]) -> int | None:
    lead_time_s = annotation.get("lead_time")
    if lead_time_s is None:
        return None
    if (
        isinstance(lead_time_s, bool)
        or not isinstance(lead_time_s, int | float)
        or not math.isfinite(lead_time_s)
        or lead_time_s < 0
    ):
        raise LabelStudioFormatError(
            f"annotation {annotation.get('id')}: lead_time is not a number of seconds >= 0"
        )
    return round(lead_time_s * 1000)
