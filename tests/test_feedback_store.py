"""The feedback store on real databases: a SQLite file and a throwaway PostgreSQL server.

Every behaviour test runs on both; what it pins is what the web app and the CLI rely on. The
store's clock is the test's: a reservation's lease passes when the test moves the clock on.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
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
RESERVATION_S = 600
START = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


class Clock:
    """The store's clock, moved on by the test: no test waits for a lease to pass."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty database: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    server_url = request.getfixturevalue("postgres_url")
    return create_database(server_url, f"store_test_{next(_database_names)}")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(database_url: str, clock: Clock) -> Iterator[Store]:
    store = Store(database_url, max_comment_chars=50, reservation_s=RESERVATION_S, clock=clock)
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


def assert_nothing_stored_twice(store: Store, campaign: str) -> None:
    stored = store.judgements(campaign)
    assert len({j.view_id for j in stored}) == len(stored), "a page stored twice"
    by_rater = Counter((j.item_id, j.rater_id) for j in stored)
    assert set(by_rater.values()) <= {1}, "an item judged twice by one rater"


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
    campaign = overall_campaign(store, count=1, k=5, overlap=2)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    first = store.next_view(campaign, ada, rng=random.Random(7))
    again = store.next_view(campaign, bob, rng=random.Random(7))
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


# --- an open page reserves its item ---


def test_two_raters_asking_in_turn_with_overlap_1_get_different_items(store):
    campaign = overall_campaign(store, count=3, overlap=1)
    ada, bob, cyd, dan = (rater(store, name) for name in ("ada", "bob", "cyd", "dan"))
    views = [store.next_view(campaign, someone) for someone in (ada, bob, cyd)]
    assert len({view.item_id for view in views}) == 3
    assert store.next_view(campaign, dan) is None  # every item is reserved
    for view, someone in zip(views, (ada, bob, cyd), strict=True):
        store.submit(view.view_id, someone, ranking(1, 2, 3))
    assert store.next_view(campaign, dan) is None  # and now judged
    assert store.progress(campaign).items_complete == 3
    assert len(store.judgements(campaign)) == 3
    assert_nothing_stored_twice(store, campaign)


def test_with_overlap_2_two_raters_may_hold_the_same_item_but_not_a_third(store):
    campaign = overall_campaign(store, count=2, overlap=2)
    ada, bob, cyd = rater(store, "ada"), rater(store, "bob"), rater(store, "cyd")
    first, second = store.next_view(campaign, ada), store.next_view(campaign, bob)
    assert first.item_id == second.item_id and first.view_id != second.view_id
    third = store.next_view(campaign, cyd)
    assert third.item_id != first.item_id
    store.submit(first.view_id, ada, ranking(1, 2, 3))  # a judgement and a reservation: full
    assert store.next_view(campaign, ada).item_id == third.item_id
    assert_nothing_stored_twice(store, campaign)


def test_a_rater_holding_an_open_page_gets_the_same_page_back_until_its_lease_ends(store, clock):
    campaign = overall_campaign(store, count=2, k=4)
    ada = rater(store, "ada")
    first = store.next_view(campaign, ada, rng=random.Random(1))
    clock.advance(RESERVATION_S - 1)
    reloaded = store.next_view(campaign, ada, rng=random.Random(2))
    assert reloaded == first  # same view id, order, item and serving time
    clock.advance(1)  # a reload does not renew the lease
    renewed = store.next_view(campaign, ada)
    assert renewed.item_id == first.item_id and renewed.view_id != first.view_id
    assert store.next_view(campaign, ada) == renewed


def test_a_reloaded_page_submitted_twice_is_stored_once(store):
    campaign = overall_campaign(store, count=2)
    ada = rater(store, "ada")
    first = store.next_view(campaign, ada)
    reloaded = store.next_view(campaign, ada)
    assert reloaded.view_id == first.view_id
    store.submit(first.view_id, ada, ranking(1, 2, 3))
    with pytest.raises(Conflict, match="submitted already"):
        store.submit(reloaded.view_id, ada, ranking(3, 2, 1))
    after = store.next_view(campaign, ada)
    assert after.item_id != first.item_id  # a submitted page is done with
    assert [j.ranks for j in store.judgements(campaign)] == [{"overall": [1, 2, 3]}]


def test_a_page_is_held_per_campaign(store):
    campaign = overall_campaign(store, count=1)
    store.create_campaign("other", k=2, criteria=["overall"])
    store.add_items("other", [NewItem("elsewhere", ["a", "b"])])
    ada = rater(store, "ada")
    held = store.next_view(campaign, ada)
    assert store.next_view("other", ada).prompt == "elsewhere"
    assert store.next_view(campaign, ada) == held


def test_after_the_lease_passes_the_item_goes_to_another_rater(store, clock):
    campaign = overall_campaign(store, count=1, overlap=1)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    held = store.next_view(campaign, ada)
    assert store.next_view(campaign, bob) is None
    clock.advance(RESERVATION_S - 1)
    assert store.next_view(campaign, bob) is None
    clock.advance(1)
    taken = store.next_view(campaign, bob)
    assert taken.item_id == held.item_id and taken.view_id != held.view_id
    # Bob's page reserves it now: Ada, back after her lease, does not get it again.
    assert store.next_view(campaign, ada) is None


def test_the_late_submission_of_an_expired_page_is_stored_even_past_the_overlap(store, clock):
    campaign = overall_campaign(store, count=1, overlap=1)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    late = store.next_view(campaign, ada)
    clock.advance(RESERVATION_S + 60)
    taken = store.next_view(campaign, bob)
    store.submit(taken.view_id, bob, ranking(1, 2, 3))
    store.submit(late.view_id, ada, ranking(3, 2, 1))  # nothing a rater submits is lost
    stored = {(j.rater, j.view_id): j.ranks["overall"] for j in store.judgements(campaign)}
    assert stored == {("ada", late.view_id): [3, 2, 1], ("bob", taken.view_id): [1, 2, 3]}
    with pytest.raises(Conflict, match="submitted already"):
        store.submit(late.view_id, ada, ranking(3, 2, 1))
    assert store.next_view(campaign, ada) is None and store.next_view(campaign, bob) is None
    assert store.progress(campaign).items_complete == 1
    assert_nothing_stored_twice(store, campaign)


def test_a_late_submission_closes_the_raters_newer_page_of_that_item(store, clock):
    campaign = overall_campaign(store, count=2, overlap=1)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    old = store.next_view(campaign, ada)
    clock.advance(RESERVATION_S)
    newer = store.next_view(campaign, ada)
    assert newer.item_id == old.item_id and newer.view_id != old.view_id
    store.submit(old.view_id, ada, ranking(1, 2, 3))
    # Her newer page no longer holds the item, for her or against anyone.
    assert store.next_view(campaign, ada).item_id != old.item_id
    assert store.next_view(campaign, bob) is None  # the other item is Ada's now
    with pytest.raises(Conflict, match="judged this item already"):
        store.submit(newer.view_id, ada, ranking(1, 2, 3))
    assert_nothing_stored_twice(store, campaign)


def test_a_skip_ends_the_reservation_and_counts_as_the_raters_judgement(store):
    campaign = overall_campaign(store, count=1, overlap=2)
    ada, bob, cyd = rater(store, "ada"), rater(store, "bob"), rater(store, "cyd")
    skipped = store.next_view(campaign, ada)
    store.submit(skipped.view_id, ada, Submission(skipped=True, skip_reason="code"))
    assert store.next_view(campaign, ada) is None
    assert store.next_view(campaign, bob).item_id == skipped.item_id
    assert store.next_view(campaign, cyd) is None  # Ada's skip and Bob's page fill it
    assert store.progress(campaign).skipped == 1


def test_the_lease_is_measured_in_time_whatever_zone_the_clock_reports_it_in(store, clock):
    campaign = overall_campaign(store, count=1, overlap=1)
    ada, bob = rater(store, "ada"), rater(store, "bob")
    held = store.next_view(campaign, ada)
    assert held.served_at == START
    # The clock now tells the time ten hours ahead of UTC: SQLite keeps no zone, the store must.
    ten_hours_ahead = timezone(timedelta(hours=10))
    clock.now = (START + timedelta(seconds=RESERVATION_S - 1)).astimezone(ten_hours_ahead)
    assert store.next_view(campaign, bob) is None
    assert store.next_view(campaign, ada) == held
    clock.advance(1)
    assert store.next_view(campaign, bob).item_id == held.item_id


def test_two_raters_asking_at_the_same_moment_with_overlap_1_get_different_items(store):
    campaign = overall_campaign(store, count=2, overlap=1)
    raters = [rater(store, name) for name in ("ada", "bob")]
    start = threading.Barrier(2)
    served: dict[int, int | None] = {}

    def ask(rater_id: int) -> None:
        start.wait()
        view = store.next_view(campaign, rater_id)
        served[rater_id] = None if view is None else view.item_id

    threads = [threading.Thread(target=ask, args=(rater_id,)) for rater_id in raters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(served) == set(raters) and None not in served.values()
    assert len(set(served.values())) == 2, served


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


def test_a_second_page_of_an_item_the_rater_judged_is_a_conflict(store, clock):
    campaign = overall_campaign(store, count=1)
    ada = rater(store, "ada")
    first = store.next_view(campaign, ada)
    clock.advance(RESERVATION_S)
    stale = store.next_view(campaign, ada)  # the lease passed: the same item on a new page
    assert (stale.item_id, stale.view_id != first.view_id) == (first.item_id, True)
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
