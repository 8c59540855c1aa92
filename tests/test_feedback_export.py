"""Exporting a campaign: the rows of each format, files training reads, and the same bytes from
SQLite and from a real PostgreSQL server."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_server import create_database

from reward_service.feedback.agreement import borda, consensus
from reward_service.feedback.export import (
    aggregated_ranking_rows,
    confidence_margin,
    export,
    ordered_pairs,
    pair_rows,
    ranking_rows,
)
from reward_service.feedback.label_studio import ImportedJudgement
from reward_service.feedback.store import Invalid, NewItem, Store, Submission
from reward_service.training.data import Pair, Ranking, read_records

CRITERIA = ["helpful", "honest"]
COLOUR = "Name a colour."
SUM = "2 + 2 = ?"
GERMAN = "Übersetze „Haus“."
ITEMS = [
    NewItem(COLOUR, ["red", "blue", "a car"], model_scores=[0.9, 0.8, -1.0]),
    NewItem(SUM, ["4", "four", "5"], source={"policy": "runs/ppo", "step": 3}),
    NewItem(GERMAN, ["house", "home", "mouse"], model_scores=[0.2, 0.2, 0.1]),
]


def ranked(helpful: list[int], honest: list[int], confidence: int, **fields) -> Submission:
    return Submission(ranks={"helpful": helpful, "honest": honest}, confidence=confidence, **fields)


# What each scripted rater submits for each prompt, whichever order the items come in.
DECISIONS = {
    ("ada", COLOUR): ranked(
        [1, 2, 3],
        [1, 1, 3],
        4,
        flags={"2": ["nonsense"]},
        comment="c is off-topic",
        time_spent_ms=1500,
    ),
    ("ada", SUM): ranked([1, 1, 3], [1, 1, 2], 2, time_spent_ms=900),  # a dense tie
    ("ada", GERMAN): Submission(
        skipped=True, skip_reason="I do not read German", time_spent_ms=300
    ),
    ("bob", COLOUR): ranked([2, 1, 3], [1, 2, 3], 1, time_spent_ms=2000),
    ("bob", SUM): ranked([1, 2, 3], [1, 2, 3], 3, comment="digits are clearer"),
    ("bob", GERMAN): ranked([1, 2, 3], [1, 1, 3], 3, time_spent_ms=4100),
}


def fill_campaign(store: Store) -> str:
    """The campaign above: three items, two raters who each judge all three (overlap 2)."""
    store.create_campaign("loop", k=3, criteria=CRITERIA, guidelines="Be fair.", overlap=2)
    store.add_items("loop", ITEMS)
    for name in ("ada", "bob"):
        rater_id = store.rater_for_token(store.add_rater(name)).id
        while (view := store.next_view("loop", rater_id, rng=random.Random(name))) is not None:
            store.submit(view.view_id, rater_id, DECISIONS[name, view.prompt])
    return "loop"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    fill_campaign(store)
    yield store
    store.close()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --- rankings ---


def test_rankings_have_a_row_per_judgement_and_criterion_by_item_then_rater(store):
    rows = ranking_rows(store.judgements("loop"), CRITERIA)
    keys = [(row["prompt"], row["rater"], row["criterion"]) for row in rows]
    assert keys == [
        (COLOUR, "ada", "helpful"), (COLOUR, "ada", "honest"),
        (COLOUR, "bob", "helpful"), (COLOUR, "bob", "honest"),
        (SUM, "ada", "helpful"), (SUM, "ada", "honest"),
        (SUM, "bob", "helpful"), (SUM, "bob", "honest"),
        (GERMAN, "bob", "helpful"), (GERMAN, "bob", "honest"),
    ]  # fmt: skip
    assert rows[1] == {
        "prompt": COLOUR,
        "completions": ["red", "blue", "a car"],
        "ranking": [1, 1, 3],
        "criterion": "honest",
        "rater": "ada",
        "confidence": 4,
        "ties": True,
        "time_spent_ms": 1500,
        "flags": {"2": ["nonsense"]},
        "comment": "c is off-topic",
        "item_id": store.items("loop")[0].id,
    }


def test_a_skipped_judgement_gives_no_rankings_row(store):
    rows = ranking_rows(store.judgements("loop"), CRITERIA)
    assert ("ada", GERMAN) not in {(row["rater"], row["prompt"]) for row in rows}


def test_ties_are_marked_and_dense_ties_come_out_in_competition_form(store):
    rows = ranking_rows(store.judgements("loop"), CRITERIA)
    ada_sum = [row for row in rows if (row["rater"], row["prompt"]) == ("ada", SUM)]
    assert [(row["ranking"], row["ties"]) for row in ada_sum] == [
        ([1, 1, 3], True),
        ([1, 1, 3], True),
    ]
    assert not rows[0]["ties"]


def test_the_rankings_file_is_what_training_reads_ties_included(store, tmp_path):
    out = tmp_path / "exports" / "rankings.jsonl"
    assert export(store, "loop", "rankings", out) == 10
    records = read_records(out)
    assert records.format == "rankings"
    rows = read_jsonl(out)
    assert records.records == [
        Ranking(row["prompt"], tuple(row["completions"]), tuple(row["ranking"])) for row in rows
    ]


@pytest.mark.parametrize("aggregate, combine", [("mean-rank", consensus), ("borda", borda)])
def test_an_aggregated_export_has_one_row_per_item_and_criterion(store, aggregate, combine):
    rows = aggregated_ranking_rows(store.judgements("loop"), CRITERIA, aggregate)
    keys = [(row["prompt"], row["criterion"]) for row in rows]
    assert keys == [(prompt, c) for prompt in (COLOUR, SUM, GERMAN) for c in CRITERIA]
    colour_helpful = rows[0]
    assert colour_helpful["ranking"] == combine([[1, 2, 3], [2, 1, 3]])
    assert (colour_helpful["aggregate"], colour_helpful["raters"]) == (aggregate, ["ada", "bob"])
    german = rows[4]
    assert (german["raters"], german["ranking"]) == (["bob"], [1, 2, 3])  # ada skipped it


def test_mean_rank_and_borda_are_the_two_aggregations_and_they_can_differ(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.create_campaign("c", k=3, criteria=["overall"], overlap=2)
    store.add_items("c", [NewItem("p", ["a", "b", "c"])])
    for name, ranks in (("ada", [1, 2, 2]), ("bob", [3, 1, 1])):
        rater_id = store.rater_for_token(store.add_rater(name)).id
        view = store.next_view("c", rater_id)
        store.submit(view.view_id, rater_id, Submission({"overall": ranks}, confidence=2))
    both = [[1, 2, 2], [3, 1, 1]]
    assert consensus(both) != borda(both), "an example on which the two aggregations differ"
    for aggregate, combine in (("mean-rank", consensus), ("borda", borda)):
        out = tmp_path / f"{aggregate}.jsonl"
        assert export(store, "c", "rankings", out, aggregate=aggregate) == 1
        assert read_jsonl(out)[0]["ranking"] == combine(both)
    store.close()


# --- pairs ---


def test_ordered_pairs_are_better_worse_and_a_tie_gives_no_pair():
    assert ordered_pairs([2, 1, 3]) == [(1, 0), (0, 2), (1, 2)]
    assert ordered_pairs([1, 1, 3]) == [(0, 2), (1, 2)]
    assert ordered_pairs([1, 1, 1]) == []


def test_the_margin_is_llama_2s_four_levels_from_the_confidence():
    assert [confidence_margin(c) for c in (1, 2, 3, 4)] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert confidence_margin(None) is None


def test_pairs_have_a_row_per_strictly_ordered_pair_with_the_confidence_margin(store):
    rows = pair_rows(store.judgements("loop"), CRITERIA)
    colour_id = store.items("loop")[0].id
    ada_colour = [row for row in rows if (row["rater"], row["prompt"]) == ("ada", COLOUR)]
    assert ada_colour == [
        {"prompt": COLOUR, "chosen": c, "rejected": r, "margin": 1.0, "criterion": crit,
         "rater": "ada", "item_id": colour_id}
        for crit, c, r in [
            ("helpful", "red", "blue"), ("helpful", "red", "a car"), ("helpful", "blue", "a car"),
            ("honest", "red", "a car"), ("honest", "blue", "a car"),
        ]
    ]  # fmt: skip
    # Per judgement, helpful + honest pairs: ada colour, ada sum, bob colour, bob sum, bob german.
    assert len(rows) == 5 + 4 + 6 + 6 + 5
    margins = {(row["rater"], row["prompt"]): row["margin"] for row in rows}
    assert margins["bob", COLOUR] == 0.0 and margins["ada", SUM] == 1 / 3


def test_a_judgement_imported_without_a_confidence_gives_pairs_without_a_margin(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'feedback.db'}")
    store.create_campaign("c", k=3, criteria=["overall"])
    store.add_items("c", [NewItem("p", ["a", "b", "c"])])
    labelled = ImportedJudgement(0, "ada", [2, 1, 3], skipped=False, comment="", time_spent_ms=None)
    store.import_judgements("c", [labelled])
    out = tmp_path / "pairs.jsonl"
    assert export(store, "c", "pairs", out) == 3
    assert [row["margin"] for row in read_jsonl(out)] == [None, None, None]
    assert [record.margin for record in read_records(out).records] == [None, None, None]
    store.close()


def test_the_pairs_file_is_what_training_reads(store, tmp_path):
    out = tmp_path / "pairs.jsonl"
    count = export(store, "loop", "pairs", out)
    records = read_records(out)
    assert (records.format, len(records.records)) == ("pairs", count)
    first = read_jsonl(out)[0]
    assert records.records[0].chosen == first["chosen"] == "red"
    assert isinstance(records.records[0], Pair)


def test_the_hf_export_is_a_datasets_folder_of_the_pairs_rows(store, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "pairs-dataset"
    count = export(store, "loop", "hf", out)
    dataset = load_from_disk(str(out))
    assert count == len(dataset) == 26
    assert dataset.to_list() == pair_rows(store.judgements("loop"), CRITERIA)


def test_an_unknown_format_or_an_aggregated_pairs_export_is_refused(store, tmp_path):
    with pytest.raises(Invalid, match="unknown export format 'csv'"):
        export(store, "loop", "csv", tmp_path / "out.csv")
    with pytest.raises(Invalid, match="the rankings format aggregates"):
        export(store, "loop", "pairs", tmp_path / "out.jsonl", aggregate="borda")
    with pytest.raises(Invalid, match="mean-rank or borda"):
        export(store, "loop", "rankings", tmp_path / "out.jsonl", aggregate="median")
    assert list(tmp_path.glob("out*")) == []


# --- the same export from either database ---


EXPORTS = [
    ("rankings", None),
    ("rankings", "mean-rank"),
    ("rankings", "borda"),
    ("pairs", None),
]


def test_sqlite_and_postgresql_give_byte_identical_exports(tmp_path, postgres_url):
    exported: dict[str, dict[str, bytes]] = {}
    pg_url = create_database(postgres_url, "export_parity")
    for backend, url in (("sqlite", f"sqlite:///{tmp_path / 'parity.db'}"), ("pg", pg_url)):
        store = Store(url)
        fill_campaign(store)
        folder = tmp_path / backend
        for format, aggregate in EXPORTS:
            export(store, "loop", format, folder / f"{format}-{aggregate}.jsonl", aggregate)
        export(store, "loop", "hf", folder / "hf")
        store.close()
        exported[backend] = {
            str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }
    assert exported["sqlite"] == exported["pg"]
    assert len(exported["sqlite"]) == len(EXPORTS) + 3  # the hf folder: data, info, state
    assert all(exported["sqlite"].values()), "every export has rows"
