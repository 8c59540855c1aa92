"""The feedback store on real databases: a SQLite file and a throwaway PostgreSQL server.

Every behaviour test runs on both; what it pins is what the web app and the CLI rely on.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from postgres_server import create_database
from sqlalchemy import text

from reward_service.feedback.db import Base, connect
from reward_service.feedback.label_studio import ImportedJudgement
from reward_service.feedback.store import (
    Conflict,
    FeedbackError,
    Forbidden,
    Invalid,
    NewItem,
    NotFound,
    Store,
    Submission,
    competition_ranks,
)

_database_names = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    server_url = request.getfixturevalue("postgres_url")
    return create_database(server_url, f"store_test_{next(_database_names)}")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url, max_comment_chars=50)
    yield store
    store.close()


def items(count: int, k: int = 3, **fields) -> list[NewItem]:
    return [
        NewItem(f"prompt {n}", [f"completion {n}.{i}" for i in range(k)], **fields)
        for n in range(count)
    ]


def ranking(*ranks: int, confidence: int = 3, **fields) -> Submission:
    return Submission(ranks={"overall": list(ranks)}, confidence=confidence, **fields)


def overall_campaign(store: Store, *, count: int = 3, k: int = 3, overlap: int = 1) -> str:
    store.create_campaign("c", k=k, criteria=["overall"], overlap=overlap)
    store.add_items("c", items(count, k))
    return "c"


def rater(store: Store, name: str) -> int:
    return store.rater_for_token(store.add_rater(name)).id


def judge(store: Store, campaign: str, rater_id: int, submission: Submission) -> int:
    view = store.next_view(campaign, rater_id)
    assert view is not None, "the rater has an item left"
    store.submit(view.view_id, rater_id, submission)
    return view.item_id


# --- the schema ---


def test_the_migrations_create_exactly_the_schema_the_models_describe(database_url):
    Store(database_url).close()
    engine = connect(database_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_opening_an_up_to_date_database_again_changes_nothing(database_url):
    store = Store(database_url)
    overall_campaign(store)
    store.close()
    reopened = Store(database_url)
    assert [campaign.name for campaign in reopened.campaigns()] == ["c"]
    reopened.close()


def test_a_sqlite_file_and_its_folder_are_created_in_wal_mode_with_full_sync(tmp_path):
    path = tmp_path / "new" / "folder" / "feedback.db"
    Store(f"sqlite:///{path}").close()
    assert path.exists()
    engine = connect(f"sqlite:///{path}")
    with engine.connect() as connection:
        pragma = lambda name: connection.execute(text(f"PRAGMA {name}")).scalar()  # noqa: E731
        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL (this build's default too, not every build's)
        assert pragma("foreign_keys") == 1
    engine.dispose()


# --- campaigns and items ---


def test_a_campaign_reads_back_as_created_with_the_three_default_criteria(store):
    store.create_campaign("first", k=4, guidelines="Prefer short answers.", overlap=2)
    info = store.campaign("first")
    assert (info.name, info.k, info.overlap) == ("first", 4, 2)
    assert info.criteria == ["helpful", "honest", "harmless"]
    assert info.guidelines == "Prefer short answers."
    assert info.created_at.tzinfo is not None
    assert [campaign.name for campaign in store.campaigns()] == ["first"]


def test_a_campaign_name_is_taken_once(store):
    store.create_campaign("c", k=2)
    with pytest.raises(Conflict, match="exists already"):
        store.create_campaign("c", k=3)


@pytest.mark.parametrize(
    "settings",
    [
        {"k": 1},
        {"k": 10},
        {"k": 3, "overlap": 0},
        {"k": 3, "criteria": []},
        {"k": 3, "criteria": ["a", "a"]},
        {"k": 3, "criteria": "overall"},
    ],
)
def test_a_campaign_needs_k_from_2_to_9_a_positive_overlap_and_distinct_criteria(store, settings):
    with pytest.raises(Invalid):
        store.create_campaign("c", **settings)
    assert store.campaigns() == []


def test_an_unknown_campaign_is_not_found(store):
    with pytest.raises(NotFound, match="no campaign named 'nope'"):
        store.campaign("nope")
    assert NotFound.status_code == 404 and issubclass(NotFound, FeedbackError)


def test_items_keep_their_insertion_order_across_batches(store):
    store.create_campaign("c", k=2, criteria=["overall"])
    assert store.add_items("c", items(2, k=2)) == 2
    assert store.add_items("c", [NewItem("later", ["a", "b"], source={"step": 7})]) == 1
    stored = store.items("c")
    assert [item.position for item in stored] == [0, 1, 2]
    assert [item.prompt for item in stored] == ["prompt 0", "prompt 1", "later"]
    assert stored[2].source == {"step": 7}


@pytest.mark.parametrize(
    "bad_item",
    [
        NewItem("p", ["only", "two"]),
        NewItem("p", ["a", "b", "c"], model_scores=[0.1, 0.2]),
        NewItem("p", ["a", "b", "c"], model_scores=[0.1, float("nan"), 0.2]),
        NewItem("p", ["a", "b", "c"], gold={"overall": [1, 3, 3]}),
        NewItem("p", ["a", "b", "c"], gold={"style": [1, 2, 3]}),
        NewItem("p\x00", ["a", "b", "c"]),
    ],
)
def test_a_bad_item_adds_none_of_its_batch(store, bad_item):
    store.create_campaign("c", k=3, criteria=["overall"])
    with pytest.raises(Invalid):
        store.add_items("c", [*items(1), bad_item])
    assert store.items("c") == []


def test_gold_ranks_are_stored_in_competition_form(store):
    store.create_campaign("c", k=3, criteria=["overall"])
    store.add_items("c", [NewItem("p", ["a", "b", "c"], gold={"overall": [1, 1, 2]})])
    assert store.items("c")[0].gold == {"overall": [1, 1, 3]}


# --- raters ---


def test_a_rater_is_found_by_their_token_and_only_its_sha256_is_stored(store):
    token = store.add_rater("ada")
    assert store.rater_for_token(token).name == "ada"
    with store.engine.connect() as connection:
        stored = connection.execute(text("SELECT name, token_sha256 FROM raters")).all()
    assert stored == [("ada", hashlib.sha256(token.encode()).hexdigest())]


def test_a_token_that_is_not_a_raters_is_forbidden(store):
    store.add_rater("ada")
    with pytest.raises(Forbidden) as refused:
        store.rater_for_token("not-a-token")
    assert refused.value.status_code == 403


def test_a_rater_name_is_taken_once(store):
    store.add_rater("ada")
    with pytest.raises(Conflict):
        store.add_rater("ada")


# --- which item next ---


def test_items_the_model_is_least_sure_about_come_first_then_the_rest_by_position(store):
    store.create_campaign("c", k=3, criteria=["overall"])
    store.add_items(
        "c",
        [
            NewItem("unscored 0", ["a", "b", "c"]),
            NewItem("wide", ["a", "b", "c"], model_scores=[0.0, 1.0, 2.0]),  # smallest gap 1
            NewItem("close", ["a", "b", "c"], model_scores=[5.0, 0.0, 5.1]),  # 0.1
            NewItem("unscored 3", ["a", "b", "c"]),
            NewItem("tied", ["a", "b", "c"], model_scores=[3.0, -1.0, 3.0]),  # 0
            NewItem("also wide", ["a", "b", "c"], model_scores=[2.0, 1.0, 0.0]),  # 1, later
        ],
    )
    ada = rater(store, "ada")
    served = []
    while (view := store.next_view("c", ada)) is not None:
        served.append(view.prompt)
        store.submit(view.view_id, ada, ranking(1, 2, 3))
    assert served == ["tied", "close", "wide", "also wide", "unscored 0", "unscored 3"]


def test_new_model_scores_change_what_comes_next(store):
    campaign = overall_campaign(store, count=3)
    ids = [item.id for item in store.items(campaign)]
    store.set_model_scores(campaign, {ids[2]: [0.5, 0.5, 0.9], ids[0]: [0.0, 1.0, 2.0]})
    ada = rater(store, "ada")
    assert store.next_view(campaign, ada).item_id == ids[2]
    with pytest.raises(Invalid):
        store.set_model_scores(campaign, {ids[1]: [1.0]})
    with pytest.raises(NotFound):
        store.set_model_scores(campaign, {max(ids) + 100: [1.0, 2.0, 3.0]})


def test_each_page_shows_a_shuffled_order_that_a_seed_reproduces(store):
    campaign = overall_campaign(store, count=1, k=5)
    ada = rater(store, "ada")
    first = store.next_view(campaign, ada, rng=random.Random(7))
    again = store.next_view(campaign, ada, rng=random.Random(7))
    expected = list(range(5))
    random.Random(7).shuffle(expected)
    assert first.order == again.order == expected
    assert first.view_id != again.view_id  # each serving is a view of its own
    assert first.shown == [first.completions[index] for index in expected]


def test_an_item_goes_to_overlap_raters_and_no_more(store):
    campaign = overall_campaign(store, count=1, overlap=2)
    ada, bob, cyd = rater(store, "ada"), rater(store, "bob"), rater(store, "cyd")
    judge(store, campaign, ada, ranking(1, 2, 3))
    assert store.next_view(campaign, ada) is None  # judged it already
    judge(store, campaign, bob, ranking(2, 1, 3))
    assert store.next_view(campaign, cyd) is None  # two raters have it


def test_a_skip_counts_toward_the_overlap_and_the_progress(store):
    campaign = overall_campaign(store, count=2, overlap=1)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    judge(store, campaign, ada, Submission(skipped=True, skip_reason="cannot judge code"))
    judge(store, campaign, bob, ranking(1, 2, 3))
    assert store.next_view(campaign, ada) is None
    progress = store.progress(campaign)
    assert (progress.items_total, progress.items_complete) == (2, 2)
    assert (progress.ranked, progress.skipped) == (1, 1)
    per_rater = [(r.name, r.ranked, r.skipped) for r in progress.per_rater]
    assert per_rater == [("ada", 0, 1), ("bob", 1, 0)]


def test_progress_lists_every_rater_by_name_and_counts_items_judged_by_overlap_raters(store):
    campaign = overall_campaign(store, count=3, overlap=2)
    zoe, ada = rater(store, "zoe"), rater(store, "ada")
    rater(store, "idle")
    judge(store, campaign, zoe, ranking(1, 2, 3))
    judge(store, campaign, zoe, ranking(1, 2, 3))
    judge(store, campaign, ada, ranking(3, 2, 1))
    progress = store.progress(campaign)
    assert (progress.items_total, progress.items_complete, progress.ranked) == (3, 1, 3)
    per_rater = [(r.name, r.ranked) for r in progress.per_rater]
    assert per_rater == [("ada", 1), ("idle", 0), ("zoe", 2)]


# --- submitting ---


def test_ranks_are_stored_as_sent_in_original_order_with_the_view_order_beside_them(store):
    store.create_campaign("c", k=3, criteria=["helpful", "harmless"])
    store.add_items("c", items(1))
    ada = rater(store, "ada")
    view = store.next_view("c", ada, rng=random.Random(1))
    submission = Submission(
        ranks={"helpful": [2, 1, 3], "harmless": [1, 1, 2]},  # a dense tie, normalised
        confidence=4,
        flags={"2": ["truncated", "unsafe", "unsafe"], 0: [], "1": ["nonsense"]},
        comment="b is clearer",
        time_spent_ms=12_345,
    )
    judgement_id = store.submit(view.view_id, ada, submission)
    [stored] = store.judgements("c")
    assert stored.id == judgement_id
    assert stored.ranks == {"helpful": [2, 1, 3], "harmless": [1, 1, 3]}
    assert stored.flags == {"1": ["nonsense"], "2": ["unsafe", "truncated"]}
    assert (stored.confidence, stored.comment, stored.time_spent_ms) == (4, "b is clearer", 12_345)
    assert (stored.rater, stored.view_id, stored.order) == ("ada", view.view_id, view.order)
    assert (stored.prompt, stored.completions) == (view.prompt, view.completions)
    assert not stored.skipped


def test_a_skip_stores_no_ranks_and_no_confidence(store):
    campaign = overall_campaign(store, count=1)
    ada = rater(store, "ada")
    skip = Submission(
        skipped=True,
        skip_reason="code",
        confidence=2,
        ranks={"overall": [1, 2, 3]},
        flags={"0": ["unsafe"]},
    )
    judge(store, campaign, ada, skip)
    [stored] = store.judgements(campaign)
    assert (stored.skipped, stored.skip_reason) == (True, "code")
    assert (stored.ranks, stored.confidence) == ({}, None)
    assert stored.flags == {"0": ["unsafe"]}


def test_a_page_submitted_twice_is_a_conflict_and_is_stored_once(store):
    campaign = overall_campaign(store, count=2)
    ada = rater(store, "ada")
    view = store.next_view(campaign, ada)
    store.submit(view.view_id, ada, ranking(1, 2, 3))
    with pytest.raises(Conflict, match="submitted already") as refused:
        store.submit(view.view_id, ada, ranking(3, 2, 1))
    assert refused.value.status_code == 409
    assert [j.ranks for j in store.judgements(campaign)] == [{"overall": [1, 2, 3]}]


def test_a_second_page_of_an_item_the_rater_judged_is_a_conflict(store):
    campaign = overall_campaign(store, count=1)
    ada = rater(store, "ada")
    first = store.next_view(campaign, ada)
    stale = store.next_view(campaign, ada)  # the same item, served again (a reload)
    store.submit(first.view_id, ada, ranking(1, 2, 3))
    with pytest.raises(Conflict, match="judged this item already"):
        store.submit(stale.view_id, ada, ranking(1, 2, 3))
    assert len(store.judgements(campaign)) == 1


def test_two_submits_of_one_page_racing_store_one_judgement(store):
    campaign = overall_campaign(store, count=1)
    ada = rater(store, "ada")
    view = store.next_view(campaign, ada)
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def submit() -> None:
        start.wait()
        try:
            store.submit(view.view_id, ada, ranking(1, 2, 3))
            outcomes.append("stored")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=submit) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "stored"]
    assert len(store.judgements(campaign)) == 1


def test_another_raters_page_is_forbidden_and_an_unknown_page_not_found(store):
    campaign = overall_campaign(store, count=1)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    view = store.next_view(campaign, ada)
    with pytest.raises(Forbidden):
        store.submit(view.view_id, bob, ranking(1, 2, 3))
    with pytest.raises(NotFound):
        store.submit("0" * 32, ada, ranking(1, 2, 3))
    assert store.judgements(campaign) == []


GOOD = ranking(1, 2, 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (Submission(ranks=None, confidence=3), "a ranking for each"),
        (replace(GOOD, ranks={}), "missing \\['overall'\\]"),
        (replace(GOOD, ranks={"overall": [1, 2, 3], "style": [1, 2, 3]}), "unknown \\['style'\\]"),
        (ranking(1, 2), "3 completions but 2 ranks"),
        (ranking(1, 2, 4), "between 1 and 3"),
        (ranking(0, 1, 2), "between 1 and 3"),
        (ranking(1, 3, 3), "not a ranking.*did you mean \\[1, 2, 2\\]"),
        (ranking(2, 2, 3), "not a ranking"),
        (ranking(1, 2, True), "list of integers"),
        (replace(GOOD, confidence=None), "confidence must be an integer between 1 and 4"),
        (replace(GOOD, confidence=5), "confidence"),
        (replace(GOOD, confidence=0), "confidence"),
        (replace(GOOD, comment="x" * 51), "51 characters; at most 50"),
        (Submission(skipped=True, skip_reason="y" * 51), "skip reason has 51 characters"),
        (replace(GOOD, flags={"0": ["boring"]}), "among \\['unsafe', 'nonsense', 'truncated'\\]"),
        (replace(GOOD, flags={"3": ["unsafe"]}), "numbered 0 to 2"),
        (replace(GOOD, flags={"-1": ["unsafe"]}), "numbered 0 to 2"),
        (replace(GOOD, time_spent_ms=-1), "time_spent_ms must be an integer at least 0"),
        (replace(GOOD, comment="a\x00b"), "NUL"),
    ],
)
def test_a_bad_submission_is_invalid_stores_nothing_and_leaves_the_page_usable(store, bad, message):
    campaign = overall_campaign(store, count=1)
    ada = rater(store, "ada")
    view = store.next_view(campaign, ada)
    with pytest.raises(Invalid, match=message) as refused:
        store.submit(view.view_id, ada, bad)
    assert refused.value.status_code == 422
    assert store.judgements(campaign) == []
    store.submit(view.view_id, ada, GOOD)
    assert len(store.judgements(campaign)) == 1


def test_a_submitted_judgement_is_committed_when_submit_returns(database_url):
    writer = Store(database_url)
    campaign = overall_campaign(writer, count=1)
    ada = rater(writer, "ada")
    view = writer.next_view(campaign, ada)
    writer.submit(view.view_id, ada, ranking(2, 1, 3, comment="kept"))
    # A second, independent connection pool: it sees only what was committed.
    reader = Store(database_url)
    [stored] = reader.judgements(campaign)
    assert (stored.ranks, stored.comment) == ({"overall": [2, 1, 3]}, "kept")
    reader.close()
    writer.close()


# --- judgements made in another tool ---


def imported(item_index: int, rater: str, ranks: list[int] | None, **fields) -> ImportedJudgement:
    fields = {"skipped": ranks is None, "comment": "", "time_spent_ms": None, **fields}
    return ImportedJudgement(item_index=item_index, rater=rater, ranks=ranks, **fields)


def test_imported_judgements_are_stored_with_their_raters_and_no_confidence(store):
    campaign = overall_campaign(store, count=2, overlap=2)
    store.add_rater("Ada Lovelace")
    count = store.import_judgements(
        campaign,
        [
            imported(1, "Ada Lovelace", [1, 1, 2], comment="close", time_spent_ms=4200),
            imported(0, "label-studio user 2", None),
            imported(1, "label-studio user 2", [3, 2, 1]),
        ],
    )
    assert count == 3
    stored = [
        (j.item_position, j.rater, j.ranks, j.skipped, j.confidence, j.order, j.time_spent_ms)
        for j in store.judgements(campaign)
    ]
    assert stored == [
        (0, "label-studio user 2", {}, True, None, [0, 1, 2], 0),
        (1, "Ada Lovelace", {"overall": [1, 1, 3]}, False, None, [0, 1, 2], 4200),
        (1, "label-studio user 2", {"overall": [3, 2, 1]}, False, None, [0, 1, 2], 0),
    ]
    # The imported rater exists, but no invitation token is theirs; the invited one is reused.
    assert [r.name for r in store.progress(campaign).per_rater] == [
        "Ada Lovelace",
        "label-studio user 2",
    ]


@pytest.mark.parametrize(
    "bad, error",
    [
        ([imported(0, "ada", [1, 2, 3]), imported(0, "ada", [3, 2, 1])], Conflict),
        ([imported(0, "ada", [1, 2, 3]), imported(7, "ada", [1, 2, 3])], NotFound),
        ([imported(0, "ada", [1, 2, 3]), imported(1, "ada", [1, 3, 3])], Invalid),
    ],
)
def test_an_import_with_a_bad_judgement_stores_none_of_them(store, bad, error):
    campaign = overall_campaign(store, count=2)
    with pytest.raises(error, match=r"imported judgement 2 \(item \d, rater 'ada'\)"):
        store.import_judgements(campaign, bad)
    assert store.judgements(campaign) == []
    assert store.progress(campaign).per_rater == []


# --- a whole campaign imported at once ---


TABLES = ("campaigns", "items", "raters", "views", "judgements")


def table_counts(store: Store) -> dict[str, int]:
    with store.engine.connect() as connection:
        return {
            table: connection.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            for table in TABLES
        }


def test_an_imported_campaign_holds_its_items_and_their_judgements(store):
    campaign_id = store.import_campaign(
        "imported",
        k=3,
        criteria=["overall"],
        guidelines="As in Label Studio.",
        overlap=2,
        items=[*items(2), NewItem("gold", ["a", "b", "c"], gold={"overall": [1, 1, 2]})],
        judgements=[imported(1, "ada", [2, 1, 3]), imported(0, "bob", None)],
    )
    info = store.campaign("imported")
    assert (info.id, info.k, info.criteria, info.overlap) == (campaign_id, 3, ["overall"], 2)
    assert info.guidelines == "As in Label Studio."
    assert [item.prompt for item in store.items("imported")] == ["prompt 0", "prompt 1", "gold"]
    assert store.items("imported")[2].gold == {"overall": [1, 1, 3]}
    judged = [(j.item_position, j.rater, j.ranks) for j in store.judgements("imported")]
    assert judged == [(0, "bob", {}), (1, "ada", {"overall": [2, 1, 3]})]


def test_a_campaign_imported_without_judgements_may_rank_by_several_criteria(store):
    store.import_campaign("c", k=3, items=items(2))
    assert store.campaign("c").criteria == ["helpful", "honest", "harmless"]
    assert len(store.items("c")) == 2 and store.judgements("c") == []


@pytest.mark.parametrize(
    "bad_items, bad_judgements, error",
    [
        (items(2), [imported(0, "ada", [1, 2, 3]), imported(1, "bob", [1, 3, 3])], Invalid),
        (items(2), [imported(0, "ada", [1, 2, 3]), imported(0, "ada", [3, 2, 1])], Conflict),
        (items(2), [imported(0, "ada", [1, 2, 3]), imported(2, "bob", [1, 2, 3])], NotFound),
        ([*items(1), NewItem("p", ["a", "b"])], [imported(0, "ada", [1, 2, 3])], Invalid),
    ],
)
def test_an_import_with_a_bad_judgement_or_item_leaves_no_campaign_behind(
    store, bad_items, bad_judgements, error
):
    with pytest.raises(error):
        store.import_campaign(
            "imported", k=3, criteria=["overall"], items=bad_items, judgements=bad_judgements
        )
    assert store.campaigns() == []
    assert table_counts(store) == {table: 0 for table in TABLES}
    # Nothing of the failed import is in the way of a corrected one.
    store.import_campaign("imported", k=3, criteria=["overall"], items=items(2))
    assert len(store.items("imported")) == 2


def test_a_second_import_under_a_taken_name_is_a_conflict_and_changes_nothing(store):
    store.import_campaign(
        "imported", k=3, criteria=["overall"], items=items(2),
        judgements=[imported(0, "ada", [1, 2, 3])],
    )  # fmt: skip
    before = table_counts(store)
    with pytest.raises(Conflict, match="a campaign named 'imported' exists already"):
        store.import_campaign(
            "imported", k=3, criteria=["overall"], items=items(3),
            judgements=[imported(0, "bob", [3, 2, 1])],
        )  # fmt: skip
    assert table_counts(store) == before
    assert [j.rater for j in store.judgements("imported")] == ["ada"]


def test_an_import_needs_a_campaign_with_one_criterion(store):
    store.create_campaign("c", k=3)
    store.add_items("c", items(1))
    with pytest.raises(Invalid, match="import into a campaign with one criterion"):
        store.import_judgements("c", [imported(0, "ada", [1, 2, 3])])
    assert store.judgements("c") == []


@pytest.mark.parametrize(
    "ranks, expected",
    [
        ([1, 2, 3, 4], [1, 2, 3, 4]),
        ([4, 1, 1, 3], [4, 1, 1, 3]),
        ([1, 1, 1, 1], [1, 1, 1, 1]),
        ([2, 1, 1, 2], [3, 1, 1, 3]),  # dense
        ([1, 1, 2, 3], [1, 1, 3, 4]),  # dense
    ],
)
def test_competition_ranks_accepts_competition_and_dense_rankings(ranks, expected):
    assert competition_ranks(ranks, 4, "test") == expected
