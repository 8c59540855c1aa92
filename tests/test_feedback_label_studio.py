"""Reading a Label Studio JSON export of a ranking project into campaign items and judgements.

The exports below are shaped as Label Studio writes them (HumanSignal/label-studio): the task and
annotation fields of docs/source/includes/task_format.md and label_studio/data_export/
serializers.py (``completed_by`` expanded to a user object, or a bare id); the List data of
web/libs/editor/src/tags/object/List.js; the Ranker value ``{"ranker": {column: [ids]}}`` of
web/libs/editor/src/tags/control/Ranker.jsx (its documented examples and __tests__/Ranker.test.ts);
the Pairwise value ``{"selected": "left"}`` of web/libs/editor/src/tags/control/Pairwise.js and the
"Human Preference collection for RLHF" template's ``prompt``/``answer1``/``answer2`` data.
"""

from __future__ import annotations

import copy
import json

import pytest

from reward_service.feedback.label_studio import (
    ImportedItem,
    ImportedJudgement,
    LabelStudioFormatError,
    LabelStudioOptions,
    parse_export,
    read_export,
)


def ranker_result(columns: dict[str, list[str]], from_name: str = "rank") -> dict:
    return {
        "id": "Xb3K9_ws1T",
        "from_name": from_name,
        "to_name": "answers",
        "type": "ranker",
        "origin": "manual",
        "value": {"ranker": columns},
    }


def annotation(annotation_id: int, completed_by, result: list[dict], **fields) -> dict:
    return {
        "id": annotation_id,
        "completed_by": completed_by,
        "result": result,
        "was_cancelled": False,
        "ground_truth": False,
        "created_at": "2025-03-09T22:16:08.728353Z",
        "updated_at": "2025-03-09T22:16:08.728378Z",
        "lead_time": 12.345,
        "result_count": 0,
        "task": 7,
        **fields,
    }


ALICE = {"id": 1, "email": "alice@example.com", "first_name": "", "last_name": ""}

# <List name="answers" value="$items"/> + <Ranker name="rank" toName="answers"/> + a TextArea.
RANKER_EXPORT = [
    {
        "id": 7,
        "project": 3,
        "data": {
            "prompt": "Write a haiku about rain.",
            "items": [
                {"id": "a", "title": "sample 0", "body": "Rain on the tin roof"},
                {"id": "b", "title": "sample 1", "body": "Wet."},
                {"id": "c", "title": "sample 2", "body": "Grey clouds weep softly"},
            ],
        },
        "annotations": [
            annotation(
                11,
                ALICE,
                [
                    ranker_result({"rank": ["c", "a", "b"]}),
                    {
                        "id": "t1",
                        "from_name": "comment",
                        "to_name": "prompt",
                        "type": "textarea",
                        "origin": "manual",
                        "value": {"text": ["c scans best"]},
                    },
                ],
            ),
            annotation(12, 2, [], was_cancelled=True, lead_time=3.0),
        ],
        "predictions": [],
        "created_at": "2025-03-09T21:52:49.513742Z",
        "updated_at": "2025-03-09T22:16:08.746926Z",
        "inner_id": 1,
        "total_annotations": 1,
        "cancelled_annotations": 1,
    },
    {
        "id": 8,
        "project": 3,
        # List.js turns ids into strings: numeric ids in the data, strings in the result.
        "data": {
            "prompt": "Name a colour.",
            "items": [{"id": 1, "body": "Blue"}, {"id": 2, "body": "Seven"}],
        },
        "annotations": [annotation(13, 2, [ranker_result({"rank": ["1", "2"]})], lead_time=None)],
    },
    {
        "id": 9,
        "project": 3,
        "data": {
            "prompt": "Unranked.",
            "items": [{"id": "x", "body": "x"}, {"id": "y", "body": "yy"}],
        },
    },
]


def test_a_ranker_export_becomes_one_item_per_task_in_list_order():
    imported = parse_export(RANKER_EXPORT)
    assert imported.items[0] == ImportedItem(
        prompt="Write a haiku about rain.",
        completions=["Rain on the tin roof", "Wet.", "Grey clouds weep softly"],
        source={
            "label_studio_task_id": 7,
            "label_studio_project": 3,
            "item_ids": ["a", "b", "c"],
            "titles": ["sample 0", "sample 1", "sample 2"],
        },
    )
    assert [item.completions for item in imported.items[1:]] == [["Blue", "Seven"], ["x", "yy"]]


def test_a_ranker_order_becomes_competition_ranks_in_the_items_order():
    first, skipped, second = parse_export(RANKER_EXPORT).judgements
    # Best first c, a, b -> a is 2nd, b 3rd, c 1st.
    assert first == ImportedJudgement(
        item_index=0,
        rater="label-studio user 1",
        ranks=[2, 3, 1],
        skipped=False,
        comment="c scans best",
        time_spent_ms=12345,
    )
    assert second == ImportedJudgement(1, "label-studio user 2", [1, 2], False, "", None)
    assert skipped.item_index == 0


def test_a_cancelled_annotation_is_a_skip_with_no_ranks_and_its_time():
    skipped = parse_export(RANKER_EXPORT).judgements[1]
    assert skipped == ImportedJudgement(0, "label-studio user 2", None, True, "", 3000)


def test_a_task_without_annotations_is_an_item_without_judgements():
    imported = parse_export(RANKER_EXPORT)
    assert len(imported.items) == 3
    assert all(judgement.item_index != 2 for judgement in imported.judgements)


def bucket_task(columns: dict[str, list[str]]) -> list[dict]:
    """<Ranker name="rank" toName="answers"> with <Bucket> children; four List items."""
    items = [{"id": name, "title": name, "body": f"text {name}"} for name in "abcd"]
    return [
        {
            "id": 21,
            "data": {"prompt": "p", "items": items},
            "annotations": [annotation(31, ALICE, [ranker_result(columns)])],
        }
    ]


def test_buckets_in_the_given_order_rank_one_after_the_other_and_unplaced_items_tie_last():
    # "best" holds one item, "rank" the rest the annotator ordered; d stayed in the "_" column.
    export = bucket_task({"_": ["d"], "rank": ["a", "c"], "best": ["b"]})
    options = LabelStudioOptions(bucket_order=["best", "rank"])
    # b, then a, then c, then d.
    assert parse_export(export, options).judgements[0].ranks == [2, 1, 3, 4]
    # Items missing from every column are unplaced too (the "_" column may be left out).
    export = bucket_task({"best": ["b"], "rank": ["a"]})
    assert parse_export(export, options).judgements[0].ranks == [2, 1, 3, 3]


def test_buckets_used_as_grades_make_each_bucket_one_tie():
    export = bucket_task({"_": ["d"], "good": ["a", "c"], "bad": ["b"]})
    options = LabelStudioOptions(bucket_order=["good", "bad"], ties_within_buckets=True)
    assert parse_export(export, options).judgements[0].ranks == [1, 3, 1, 4]


def test_a_plain_ranker_stays_a_strict_order_even_with_ties_within_buckets():
    options = LabelStudioOptions(ties_within_buckets=True)
    assert parse_export(RANKER_EXPORT, options).judgements[0].ranks == [2, 3, 1]


def test_several_buckets_without_their_order_are_refused_naming_the_task():
    export = bucket_task({"_": [], "best": ["b"], "rank": ["a", "c", "d"]})
    with pytest.raises(
        LabelStudioFormatError, match=r"task 21: .*buckets best, rank.*bucket_order"
    ):
        parse_export(export)


# <Pairwise name="comparison" toName="answer1,answer2"/> over <Text value="$answer1"/> and
# <Text value="$answer2"/>: from_name and to_name are both the Pairwise tag.
PAIRWISE_EXPORT = [
    {
        "id": 40,
        "data": {"prompt": "Say hi.", "answer1": "Hello!", "answer2": "Go away."},
        "annotations": [
            annotation(
                41,
                {"id": 5, "email": "", "first_name": "B", "last_name": "C"},
                [
                    {
                        "id": "pw1",
                        "from_name": "comparison",
                        "to_name": "comparison",
                        "type": "pairwise",
                        "origin": "manual",
                        "value": {"selected": "right"},
                    }
                ],
                lead_time=0.5,
            )
        ],
    }
]


def test_a_pairwise_choice_is_a_ranking_of_two():
    imported = parse_export(PAIRWISE_EXPORT)
    assert imported.items[0].completions == ["Hello!", "Go away."]
    assert imported.judgements == [ImportedJudgement(0, "B C", [2, 1], False, "", 500)]


def with_annotators(*users) -> list[dict]:
    """The Ranker export's first task, annotated once by each of ``users``."""
    task = copy.deepcopy(RANKER_EXPORT[0])
    result = [ranker_result({"rank": ["c", "a", "b"]})]
    task["annotations"] = [annotation(50 + n, user, result) for n, user in enumerate(users)]
    return [task]


EMAIL = {"email": "ann@example.com"}


@pytest.mark.parametrize(
    "completed_by, name",
    [
        ({"id": 4, **EMAIL, "first_name": "Ann", "last_name": "Lee"}, "Ann Lee"),
        ({"id": 4, **EMAIL, "first_name": " Ann ", "last_name": ""}, "Ann"),
        ({"id": 4, **EMAIL, "last_name": "Lee"}, "Lee"),
        ({"id": 4, **EMAIL, "first_name": "", "last_name": ""}, "label-studio user 4"),
        ({"id": "4", **EMAIL}, "label-studio user 4"),
        (4, "label-studio user 4"),
    ],
)
def test_an_annotator_is_named_by_their_names_else_their_user_id_never_their_email(
    completed_by, name
):
    imported = parse_export(with_annotators(completed_by))
    assert [judgement.rater for judgement in imported.judgements] == [name]
    assert "example.com" not in repr(imported)


def test_two_annotators_of_the_same_name_stay_two_raters_told_apart_by_their_id():
    ann = {"id": 4, "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee"}
    other_ann = {"id": 9, "email": "ann.lee@example.org", "first_name": "Ann", "last_name": "Lee"}
    bob = {"id": 5, "first_name": "Bob", "last_name": ""}
    imported = parse_export(with_annotators(ann, other_ann, bob))
    assert [judgement.rater for judgement in imported.judgements] == [
        "Ann Lee (label-studio user 4)",
        "Ann Lee (label-studio user 9)",
        "Bob",
    ]
    # One person annotating twice keeps one name (the store refuses the second judgement).
    twice = parse_export(with_annotators(ann, ann))
    assert [judgement.rater for judgement in twice.judgements] == ["Ann Lee", "Ann Lee"]


def malformed(export: list[dict], edit) -> list[dict]:
    export = copy.deepcopy(export)
    edit(export)
    return export


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda e: e[0]["annotations"][0]["result"][0]["value"]["ranker"].update(
                rank=["c", "a", "z"]
            ),
            r"task 7: annotation 11: the Ranker names ids not in the List: \['z'\]",
        ),
        (
            lambda e: e[0]["annotations"][0]["result"][0]["value"]["ranker"].update(
                rank=["c", "a", "c"]
            ),
            r"task 7: annotation 11: the Ranker places an item twice",
        ),
        (
            lambda e: e[0]["annotations"][0]["result"][0]["value"].update(ranker=["c", "a"]),
            r"task 7: annotation 11: a Ranker value is",
        ),
        (
            lambda e: e[0]["annotations"][0].update(result=[]),
            r"task 7: annotation 11 has no ranker result",
        ),
        (
            lambda e: e[1]["data"].pop("prompt"),
            r'task 8: no text in data field "prompt" for the prompt \(data fields: items\)',
        ),
        (lambda e: e[1]["data"]["items"].pop(), r"task 8: a ranking needs at least 2 List items"),
        (
            lambda e: e[1]["data"]["items"].append({"id": "2", "body": "again"}),
            r"task 8: List item ids repeat",
        ),
        (
            lambda e: e[1]["data"].update(items="Blue, Seven"),
            r"task 8: no List items .* and no \"answer1\"/\"answer2\" texts",
        ),
        (lambda e: e[1]["annotations"][0].pop("completed_by"), r"task 8: annotation 13: comp"),
        (
            lambda e: e[0]["annotations"][0]["completed_by"].pop("id"),
            r"task 7: annotation 11: completed_by is not a user id or a user object with an id",
        ),
        (
            lambda e: e[1]["annotations"][0].update(lead_time="long"),
            r"task 8: annotation 13: lead_time is not a number of seconds",
        ),
        (lambda e: e[2].pop("data"), r'task 9: a task is an object with a "data" object'),
        (lambda e: e[2].pop("id") and e[2].pop("data"), r"task #2 \(no id\)"),
    ],
)
def test_malformed_ranker_exports_are_refused_naming_the_task(edit, message):
    with pytest.raises(LabelStudioFormatError, match=message):
        parse_export(malformed(RANKER_EXPORT, edit))


def test_a_pairwise_choice_other_than_left_or_right_is_refused():
    export = malformed(
        PAIRWISE_EXPORT,
        lambda e: e[0]["annotations"][0]["result"][0]["value"].update(selected="both"),
    )
    with pytest.raises(LabelStudioFormatError, match=r"task 40: .*\"left\" or \"right\""):
        parse_export(export)


def test_several_rankers_in_one_annotation_need_the_one_to_read():
    second = ranker_result({"honest": ["a", "b", "c"]}, from_name="honest")
    export = malformed(RANKER_EXPORT, lambda e: e[0]["annotations"][0]["result"].append(second))
    with pytest.raises(LabelStudioFormatError, match=r"several ranker results \(rank, honest\)"):
        parse_export(export)
    honest = parse_export(export[:1], LabelStudioOptions(from_name="honest"))
    assert honest.judgements[0].ranks == [1, 2, 3]


def test_the_list_field_is_found_by_its_shape_or_named_when_ambiguous():
    export = malformed(
        RANKER_EXPORT, lambda e: e[1]["data"].update(extra=[{"id": "q", "body": "?"}])
    )
    with pytest.raises(LabelStudioFormatError, match="several data fields .* items_field"):
        parse_export(export)
    imported = parse_export(export, LabelStudioOptions(items_field="items"))
    assert imported.items[1].completions == ["Blue", "Seven"]


def test_the_format_error_is_a_value_error_and_files_are_read_as_json(tmp_path):
    path = tmp_path / "export.json"
    path.write_text(json.dumps(RANKER_EXPORT), encoding="utf-8")
    assert read_export(path) == parse_export(RANKER_EXPORT)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(ValueError, match="export.json is not JSON"):
        read_export(path)
    with pytest.raises(LabelStudioFormatError, match="a list of tasks, got dict"):
        parse_export({"tasks": RANKER_EXPORT})
