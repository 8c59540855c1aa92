"""The ranking app over HTTP: a real `reward-service feedback serve` process on a loopback port, a
real SQLite file, httpx as the rater's (or a scripted rater's) client. Bad input gets a clear 4xx
and stores nothing; nothing is stored twice; raters see nothing of the policy or the model."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from itertools import combinations
from pathlib import Path

import httpx
import pytest
from browser import FeedbackServer, feedback_command
from helpers import HTTP_TIMEOUT_S

from reward_service.cli import main as reward_service_main
from reward_service.client import RewardClient
from reward_service.feedback.settings import FeedbackSettings
from reward_service.feedback.store import NewItem, Store

ADMIN_KEY = "admin-key-for-tests"
MAX_COMMENT_CHARS = 40
MAX_BODY_BYTES = 4096
SECRET_POLICY = "/runs/SECRET-POLICY-FOLDER"
SECRET_SCORES = [0.123456789, 0.987654321, 0.555555555]


def write_items(path: Path, count: int, *, k: int = 3, scores: bool = True) -> Path:
    """A `policy-trainer sample` file: `count` prompts of `k` completions, with a source and
    (optionally) model scores that raters must never see."""
    lines = []
    for number in range(count):
        line = {
            "prompt": f"Prompt {number}: say something kind.",
            "completions": [f"Completion {number}.{index}" for index in range(k)],
            "source": {"policy": SECRET_POLICY, "step": 7, "temperature": 0.7},
        }
        if scores:
            line["model_scores"] = SECRET_SCORES[:k]
        lines.append(json.dumps(line))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback-app")


@pytest.fixture(scope="module")
def db(workspace: Path) -> str:
    return f"sqlite:///{workspace / 'feedback.db'}"


@pytest.fixture(scope="module")
def server(workspace: Path, db: str) -> Iterator[FeedbackServer]:
    feedback_command("upgrade", "--db", db)
    running = FeedbackServer(
        db,
        ADMIN_KEY,
        workspace,
        args=(
            "--max-comment-chars",
            str(MAX_COMMENT_CHARS),
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
        ),
    )
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def store(server: FeedbackServer, db: str) -> Iterator[Store]:
    """The same database, read directly: what was stored, whatever the API says."""
    opened = Store(db)
    yield opened
    opened.close()


_campaigns = iter(range(1_000_000))


@pytest.fixture
def campaign(server: FeedbackServer, workspace: Path, db: str) -> str:
    """A fresh campaign of 3 items x 3 completions, ranked by helpful and harmless, 2 raters per
    item, whose items carry a source and model scores."""
    name = f"campaign-{next(_campaigns)}"
    items = write_items(workspace / f"{name}.jsonl", 3)
    feedback_command(
        "campaign", "create", name, "--items", str(items), "--criteria", "helpful,harmless",
        "--overlap", "2", "--db", db,
    )  # fmt: skip
    return name


_raters = iter(range(1_000_000))


def invite(server: FeedbackServer, db: str) -> str:
    """A new rater's invitation link, as `reward-service feedback invite` prints it."""
    printed = feedback_command(
        "invite", f"rater-{next(_raters)}", "--db", db, "--base-url", server.url
    )
    link = printed.strip()
    assert re.fullmatch(re.escape(server.url) + r"/join/[A-Za-z0-9_-]{20,}", link), printed
    return link


@pytest.fixture
def rater(server: FeedbackServer, db: str) -> Iterator[httpx.Client]:
    client = server.rater(invite(server, db))
    yield client
    client.close()


@pytest.fixture
def other_rater(server: FeedbackServer, db: str) -> Iterator[httpx.Client]:
    client = server.rater(invite(server, db))
    yield client
    client.close()


def next_view(client: httpx.Client, campaign: str) -> dict:
    response = client.get(f"/api/campaigns/{campaign}/next")
    assert response.status_code == 200, response.text
    return response.json()


def good_body(view: dict) -> dict:
    """Ranks the completions in their original order, a tie on harmless."""
    k = view["k"]
    return {
        "ranks": {"helpful": list(range(1, k + 1)), "harmless": [1, 1, *range(3, k + 1)]},
        "confidence": 3,
        "flags": {"0": ["truncated"]},
        "comment": "fine",
        "time_spent_ms": 1234,
    }


def submit(client: httpx.Client, view: dict, body: dict) -> httpx.Response:
    return client.post(f"/api/views/{view['view_id']}/judgement", json=body)


def judgements_of(store: Store, campaign: str) -> list:
    return store.judgements(campaign)


# --- signing in ---------------------------------------------------------------------------


def test_an_invitation_link_signs_the_rater_in_with_an_httponly_samesite_strict_cookie(
    server, db, campaign
):
    link = invite(server, db)
    response = httpx.get(link, timeout=HTTP_TIMEOUT_S)
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert re.match(r"feedback_rater=[A-Za-z0-9_-]+;", cookie)
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    # The page moves on by itself (a same-site navigation, which sends the Strict cookie).
    assert 'http-equiv="refresh"' in response.text
    token = link.rsplit("/", 1)[1]
    signed_in = httpx.get(
        f"{server.url}/api/campaigns",
        cookies={"feedback_rater": token},
        timeout=HTTP_TIMEOUT_S,
    )
    assert signed_in.status_code == 200
    assert campaign in [entry["name"] for entry in signed_in.json()]


def test_a_token_that_is_not_a_raters_gets_403_and_no_token_401(server, campaign):
    page = httpx.get(f"{server.url}/join/not-a-token", timeout=HTTP_TIMEOUT_S)
    assert page.status_code == 403
    assert "set-cookie" not in page.headers
    assert "not a rater" in page.text and "<html" in page.text
    for headers, cookies, status in (
        ({}, {"feedback_rater": "not-a-token"}, 403),
        ({"Authorization": "Bearer not-a-token"}, {}, 403),
        ({}, {}, 401),
    ):
        response = httpx.get(
            f"{server.url}/api/campaigns/{campaign}/next",
            headers=headers,
            cookies=cookies,
            timeout=HTTP_TIMEOUT_S,
        )
        assert response.status_code == status, response.text
        assert response.json()["detail"]
    # A page without a sign-in says how to sign in, rather than failing.
    task = httpx.get(f"{server.url}/campaigns/{campaign}/task", timeout=HTTP_TIMEOUT_S)
    assert task.status_code == 401
    assert "invitation link" in task.text


def test_a_scripted_rater_may_send_its_token_as_a_bearer_token(server, db, campaign):
    token = invite(server, db).rsplit("/", 1)[1]
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT_S
    ) as client:
        view = next_view(client, campaign)
        assert submit(client, view, good_body(view)).status_code == 201


# --- bad input: a clear 4xx, nothing stored -----------------------------------------------

NOT_A_RANKING = {
    "too few ranks": {"helpful": [1, 2], "harmless": [1, 2, 3]},
    "too many ranks": {"helpful": [1, 2, 3, 4], "harmless": [1, 2, 3]},
    "a rank of 0": {"helpful": [0, 1, 2], "harmless": [1, 2, 3]},
    "a rank past k": {"helpful": [1, 2, 4], "harmless": [1, 2, 3]},
    "a gap that no tie explains": {"helpful": [1, 3, 3], "harmless": [1, 2, 3]},
    "a missing criterion": {"helpful": [1, 2, 3]},
    "an unknown criterion": {"helpful": [1, 2, 3], "harmless": [1, 2, 3], "fun": [1, 2, 3]},
    "ranks that are not numbers": {"helpful": ["a", "b", "c"], "harmless": [1, 2, 3]},
}


def test_a_ranking_that_is_not_a_ranking_of_the_items_completions_gets_422_and_stores_nothing(
    rater, store, campaign
):
    view = next_view(rater, campaign)
    for problem, ranks in NOT_A_RANKING.items():
        response = submit(rater, view, {**good_body(view), "ranks": ranks})
        assert response.status_code == 422, (problem, response.text)
        assert isinstance(response.json()["detail"], str) and response.json()["detail"], problem
    for problem, change in {
        "no ranks though not skipped": {"ranks": None},
        "no confidence": {"confidence": None},
        "a confidence of 5": {"confidence": 5},
        "an unknown flag": {"flags": {"0": ["boring"]}},
        "a flag on a completion the item lacks": {"flags": {"7": ["unsafe"]}},
        "a negative time": {"time_spent_ms": -1},
        "an unknown field": {"score": 1.0},
    }.items():
        response = submit(rater, view, {**good_body(view), **change})
        assert response.status_code == 422, (problem, response.text)
        assert response.json()["detail"], problem
    not_json = rater.post(
        f"/api/views/{view['view_id']}/judgement",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert not_json.status_code == 422
    assert judgements_of(store, campaign) == []
    # The refusals left the page usable: it is still the rater's to submit, once.
    assert submit(rater, view, good_body(view)).status_code == 201
    assert len(judgements_of(store, campaign)) == 1


def test_a_page_submitted_twice_is_stored_once(rater, store, campaign):
    view = next_view(rater, campaign)
    first = submit(rater, view, good_body(view))
    assert first.status_code == 201
    again = submit(rater, view, good_body(view))
    assert again.status_code == 409
    assert "submitted already" in again.json()["detail"]
    stored = judgements_of(store, campaign)
    assert [judgement.id for judgement in stored] == [first.json()["judgement_id"]]
    assert stored[0].ranks == {"helpful": [1, 2, 3], "harmless": [1, 1, 3]}
    assert stored[0].order == view["order"]
    assert stored[0].time_spent_ms == 1234
    assert stored[0].flags == {"0": ["truncated"]}


def test_a_reloaded_page_shows_the_same_task_and_is_stored_once(rater, store, campaign):
    old = next_view(rater, campaign)
    # A reload (of the page, or of the API's next) serves the same page: same view, same order.
    reloaded = rater.get(f"/campaigns/{campaign}/task")
    assert reloaded.status_code == 200 and old["view_id"] in reloaded.text
    again = next_view(rater, campaign)
    assert again == old
    assert submit(rater, again, good_body(again)).status_code == 201
    twice = submit(rater, old, good_body(old))
    assert twice.status_code == 409
    assert "submitted already" in twice.json()["detail"]
    assert len(judgements_of(store, campaign)) == 1
    assert next_view(rater, campaign)["prompt"] != old["prompt"]


def test_two_raters_asking_at_once_with_overlap_1_get_different_items(server, workspace, db, store):
    name = f"campaign-{next(_campaigns)}"
    items = write_items(workspace / f"{name}.jsonl", 2)
    feedback_command(
        "campaign", "create", name, "--items", str(items), "--criteria", "overall",
        "--overlap", "1", "--db", db,
    )  # fmt: skip
    raters = [server.rater(invite(server, db)) for _ in range(2)]
    start = threading.Barrier(len(raters))

    def ask(client: httpx.Client) -> dict:
        start.wait()
        return next_view(client, name)

    try:
        with ThreadPoolExecutor(len(raters)) as pool:
            views = list(pool.map(ask, raters))
        assert views[0]["prompt"] != views[1]["prompt"], views
        for client, view in zip(raters, views, strict=True):
            body = {"ranks": {"overall": [1, 2, 3]}, "confidence": 2}
            assert submit(client, view, body).status_code == 201
            assert client.get(f"/api/campaigns/{name}/next").status_code == 204
    finally:
        for client in raters:
            client.close()
    stored = judgements_of(store, name)
    assert sorted(j.prompt for j in stored) == sorted(view["prompt"] for view in views)


def test_an_oversized_comment_gets_422_and_an_oversized_body_413(rater, store, campaign):
    view = next_view(rater, campaign)
    too_long = submit(rater, view, {**good_body(view), "comment": "x" * (MAX_COMMENT_CHARS + 1)})
    assert too_long.status_code == 422
    assert "comment" in too_long.json()["detail"]
    huge = submit(rater, view, {**good_body(view), "comment": "x" * MAX_BODY_BYTES})
    assert huge.status_code == 413
    assert huge.json()["detail"]
    assert judgements_of(store, campaign) == []
    longest = submit(rater, view, {**good_body(view), "comment": "x" * MAX_COMMENT_CHARS})
    assert longest.status_code == 201
    assert judgements_of(store, campaign)[0].comment == "x" * MAX_COMMENT_CHARS


def test_another_raters_page_gets_403_and_stays_theirs(rater, other_rater, store, campaign):
    view = next_view(rater, campaign)
    stolen = submit(other_rater, view, good_body(view))
    assert stolen.status_code == 403
    assert "another rater" in stolen.json()["detail"]
    assert judgements_of(store, campaign) == []
    assert submit(rater, view, good_body(view)).status_code == 201
    (stored,) = judgements_of(store, campaign)
    assert stored.view_id == view["view_id"]


def test_an_unknown_campaign_or_page_is_404(rater, campaign):
    assert rater.get("/api/campaigns/no-such-campaign/next").status_code == 404
    assert rater.get("/campaigns/no-such-campaign/task").status_code == 404
    view = next_view(rater, campaign)
    missing = submit(rater, {**view, "view_id": "0" * 32}, good_body(view))
    assert missing.status_code == 404
    assert missing.json()["detail"]


def test_a_skip_needs_no_ranking_and_counts_as_judged(rater, store, campaign):
    view = next_view(rater, campaign)
    skipped = submit(
        rater, view, {"skipped": True, "skip_reason": "The prompt is unclear", "time_spent_ms": 5}
    )
    assert skipped.status_code == 201
    (stored,) = judgements_of(store, campaign)
    assert stored.skipped and stored.skip_reason == "The prompt is unclear" and stored.ranks == {}
    assert next_view(rater, campaign)["prompt"] != view["prompt"]


def test_a_rater_with_nothing_left_gets_204(rater, campaign):
    for _ in range(3):
        view = next_view(rater, campaign)
        assert submit(rater, view, good_body(view)).status_code == 201
    assert rater.get(f"/api/campaigns/{campaign}/next").status_code == 204
    assert "All done" in rater.get(f"/campaigns/{campaign}/task").text


# --- what raters see ----------------------------------------------------------------------


def test_raters_never_receive_model_scores_source_gold_or_other_raters_answers(
    server, rater, other_rater, store, db, campaign
):
    store.add_items(
        campaign,
        [
            NewItem(
                "A prompt with a known ranking",
                ["known a", "known b", "known c"],
                source={"policy": SECRET_POLICY},
                model_scores=SECRET_SCORES,
                gold={"helpful": [3, 2, 1], "harmless": [1, 2, 3]},
            )
        ],
    )
    view = next_view(other_rater, campaign)
    assert submit(other_rater, view, {**good_body(view), "comment": "OTHER-RATERS-ANSWER"})
    texts = []
    for _ in range(4):  # every item, the gold one included
        response = rater.get(f"/api/campaigns/{campaign}/next")
        texts.append(response.text)
        view = response.json()
        assert set(view) == {
            "view_id",
            "campaign",
            "prompt",
            "completions",
            "order",
            "criteria",
            "k",
        }
        texts.append(rater.get(f"/campaigns/{campaign}/task").text)
        assert submit(rater, view, good_body(view)).status_code == 201
    texts.append(rater.get("/api/campaigns").text)
    texts.append(rater.get("/campaigns").text)
    assert any("A prompt with a known ranking" in text for text in texts)
    everything = "\n".join(texts)
    for secret in ("SECRET-POLICY", "model_scores", "source", "gold", "OTHER-RATERS-ANSWER"):
        assert secret not in everything, secret
    for score in SECRET_SCORES:
        assert str(score)[2:8] not in everything, score
    # Nor do the rater's credentials open the admin pages.
    assert rater.get(f"/api/admin/campaigns/{campaign}").status_code == 401


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and tag in ("script", "link", "img"):
                if value.startswith("data:"):  # inline, fetched from nowhere
                    continue
                self.urls.append(value)


def test_the_task_page_loads_only_the_apps_own_assets(rater, campaign):
    page = rater.get(f"/campaigns/{campaign}/task")
    assert page.status_code == 200
    assert '<meta name="viewport"' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    parser = _Assets()
    parser.feed(page.text)
    assert {Path(url).name for url in parser.urls} == {"feedback.css", "task.js"}
    for url in parser.urls:
        assert httpx.URL(url).host in ("", "127.0.0.1"), url
        assert rater.get(url).status_code == 200


# --- admin ---------------------------------------------------------------------------------


def test_the_admin_pages_and_api_need_the_admin_key(server, campaign):
    paths = ["/admin", f"/admin/campaigns/{campaign}", "/api/admin/campaigns"]
    paths.append(f"/api/admin/campaigns/{campaign}")
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT_S) as anyone:
        for path in paths:
            for headers in ({}, {"X-Admin-Key": "wrong"}, {"X-Admin-Key": ADMIN_KEY[:-1]}):
                response = anyone.get(path, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert "Ranked" not in response.text
        assert 'name="key"' in anyone.get("/admin").text  # the login form
        wrong = anyone.post("/admin/login", data={"key": "wrong"})
        assert wrong.status_code == 401 and "feedback_admin" not in wrong.headers.get(
            "set-cookie", ""
        )
        assert anyone.post("/api/admin/raters", json={"name": "intruder"}).status_code == 401
        login = anyone.post("/admin/login", data={"key": ADMIN_KEY})
        assert login.status_code == 303
        assert "httponly" in login.headers["set-cookie"].lower()
        assert ADMIN_KEY not in login.headers["set-cookie"]  # a digest of it, not the key
        for path in paths:  # the login form's cookie now
            assert anyone.get(path).status_code == 200, path
    with server.admin() as admin:
        for path in paths:
            assert admin.get(path).status_code == 200, path
        listed = admin.get("/api/admin/campaigns").json()
        assert campaign in [entry["name"] for entry in listed]


def test_an_admin_invites_a_rater_whose_link_works(server, campaign):
    with server.admin() as admin:
        invitation = admin.post("/api/admin/raters", json={"name": "dana"})
        assert invitation.status_code == 201
        assert admin.post("/api/admin/raters", json={"name": "dana"}).status_code == 409
    dana = server.rater(invitation.json()["url"])
    view = next_view(dana, campaign)
    assert submit(dana, view, good_body(view)).status_code == 201
    dana.close()
    with server.admin() as admin:
        progress = admin.get(f"/api/admin/campaigns/{campaign}").json()["progress"]
    assert {rater["name"]: rater["ranked"] for rater in progress["per_rater"]}["dana"] == 1


def test_the_quality_report_equals_a_hand_computation(server, rater, other_rater, campaign):
    view = next_view(rater, campaign)
    other_view = next_view(other_rater, campaign)
    assert view["prompt"] == other_view["prompt"]  # both get the first item (2 raters per item)
    first = {"helpful": [1, 2, 3], "harmless": [1, 1, 3]}
    second = {"helpful": [1, 3, 2], "harmless": [1, 1, 3]}
    assert submit(rater, view, {**good_body(view), "ranks": first}).status_code == 201
    assert submit(other_rater, other_view, {**good_body(view), "ranks": second}).status_code == 201
    with server.admin() as admin:
        report = admin.get(f"/api/admin/campaigns/{campaign}").json()
        page = admin.get(f"/admin/campaigns/{campaign}").text
    helpful, harmless = (
        report["quality"]["criteria"]["helpful"],
        report["quality"]["criteria"]["harmless"],
    )
    # helpful: pairs (0,1) and (0,2) ordered alike, (1,2) not: 2 of 3.
    assert helpful["pairwise"] == pytest.approx(2 / 3)
    assert harmless["pairwise"] == 1.0
    # Kendall's W, m = 2 raters, n = 3: rank sums 2, 5, 5 around their mean 4, S = 6,
    # W = 12 S / (m^2 (n^3 - n)) = 72 / 96.
    assert helpful["kendalls_w_mean"] == pytest.approx(0.75)
    # The model's scores [0.12, 0.99, 0.56] put completion 1 first, then 2, then 0. Of the first
    # rater's helpful pairs (0 over 1, 0 over 2, 1 over 2) it agrees with the last; of the
    # second's (0 over 2, 0 over 1, 2 over 1) with none: 1 of 6.
    assert (helpful["model_agreeing_pairs"], helpful["model_pairs"]) == (1, 6)
    assert report["progress"]["items_complete"] == 1
    assert report["reward_model"] is None
    assert "0.67" in page and "0.75" in page


def test_the_quality_report_scores_items_with_the_reward_service(
    workspace, db, tiny_model_factory, server_factory
):
    folder = tiny_model_factory(
        "feedback-sentiment",
        labels=["NEGATIVE", "POSITIVE"],
        reward_config={"preset": "sentiment", "input_format": "pair", "scale": 1000.0},
    )
    reward = server_factory(["--model", f"m={folder}"])
    name = "scored-campaign"
    items = write_items(workspace / f"{name}.jsonl", 2, scores=False)
    scored_db = f"sqlite:///{workspace / 'scored.db'}"
    feedback_command(
        "campaign", "create", name, "--items", str(items), "--criteria", "overall",
        "--db", scored_db,
    )  # fmt: skip
    link = feedback_command("invite", "erin", "--db", scored_db).strip()
    app = FeedbackServer(scored_db, ADMIN_KEY, workspace, args=("--reward-url", reward.url))
    app.start()
    try:
        token = link.rsplit("/", 1)[1]
        with httpx.Client(base_url=app.url, timeout=HTTP_TIMEOUT_S) as erin:
            erin.cookies.set("feedback_rater", token)
            view = next_view(erin, name)
            body = {"ranks": {"overall": [3, 1, 2]}, "confidence": 4}
            assert submit(erin, view, body).status_code == 201
        with app.admin() as admin:
            report = admin.get(f"/api/admin/campaigns/{name}").json()
    finally:
        app.stop()
    assert report["reward_model"] == {"url": reward.url, "scored": 2, "error": None}
    scored = Store(scored_db)
    try:
        stored = {item.prompt: item for item in scored.items(name)}
    finally:
        scored.close()
    with RewardClient(reward.url) as client:
        for prompt, item in stored.items():
            expected = client.score(prompts=[prompt] * 3, completions=item.completions)
            assert item.model_scores == pytest.approx(expected, rel=1e-4, abs=1e-3)
    scores = stored[view["prompt"]].model_scores
    ranks = [3, 1, 2]
    agreeing = 0
    for i, j in combinations(range(3), 2):
        better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
        agreeing += scores[better] > scores[worse]
    overall = report["quality"]["criteria"]["overall"]
    assert (overall["model_agreeing_pairs"], overall["model_pairs"]) == (agreeing, 3)


# --- the command line ------------------------------------------------------------------------


def test_campaign_create_reads_the_items_file_and_refuses_what_it_cannot_use(workspace, capsys):
    database = f"sqlite:///{workspace / 'cli.db'}"
    items = write_items(workspace / "cli-items.jsonl", 2, k=4, scores=False)
    printed = feedback_command(
        "campaign", "create", "cli", "--items", str(items), "--criteria", "overall",
        "--db", database,
    )  # fmt: skip
    assert "2 items of 4 completions" in printed
    opened = Store(database)
    try:
        (created,) = opened.campaigns()
        assert (created.name, created.k, created.criteria) == ("cli", 4, ["overall"])
        assert opened.items("cli")[0].source["policy"] == SECRET_POLICY
    finally:
        opened.close()
    for args, message in (
        (["--items", str(items)], "exists already"),
        (["--items", str(workspace / "missing.jsonl")], "missing.jsonl"),
    ):
        status = reward_service_main(
            ["feedback", "campaign", "create", "cli", *args, "--db", database]
        )
        assert status == 2
        assert message in capsys.readouterr().err


def test_serve_refuses_to_start_without_an_admin_key(workspace, capsys, monkeypatch):
    monkeypatch.delenv("REWARD_FEEDBACK_ADMIN_KEY", raising=False)
    database = f"sqlite:///{workspace / 'unkeyed.db'}"
    assert reward_service_main(["feedback", "serve", "--db", database]) == 2
    assert "admin key" in capsys.readouterr().err


def test_the_reservation_time_comes_from_a_flag_or_the_environment(workspace, capsys, monkeypatch):
    monkeypatch.setenv("REWARD_FEEDBACK_RESERVATION_S", "90")
    assert FeedbackSettings().reservation_s == 90
    monkeypatch.setenv("REWARD_FEEDBACK_ADMIN_KEY", ADMIN_KEY)
    database = f"sqlite:///{workspace / 'reservation.db'}"
    assert reward_service_main(["feedback", "serve", "--db", database, "--reservation-s", "0"]) == 2
    assert "reservation_s" in capsys.readouterr().err


def campaign_names(database: str) -> list[str]:
    store = Store(database)
    try:
        return [campaign.name for campaign in store.campaigns()]
    finally:
        store.close()


def gold_items(path: Path, gold: object) -> Path:
    """An items file of two lines, the second a gold item with ``gold``."""
    write_items(path, 2, scores=False)
    lines = path.read_text().splitlines()
    second = json.loads(lines[1])
    second["gold"] = gold
    path.write_text(f"{lines[0]}\n{json.dumps(second)}\n")
    return path


def test_campaign_create_takes_gold_rankings_from_the_items_file(workspace):
    database = f"sqlite:///{workspace / 'gold.db'}"
    items = gold_items(workspace / "gold.jsonl", {"helpful": [2, 1, 1], "harmless": [1, 2, 3]})
    printed = feedback_command(
        "campaign", "create", "gold", "--items", str(items), "--criteria", "helpful,harmless",
        "--db", database,
    )  # fmt: skip
    assert "2 items of 3 completions (1 gold)" in printed
    store = Store(database)
    try:
        assert [item.gold for item in store.items("gold")] == [
            None,
            {"helpful": [3, 1, 1], "harmless": [1, 2, 3]},  # a dense tie in competition form
        ]
    finally:
        store.close()


@pytest.mark.parametrize(
    "gold, message",
    [
        ({"helpful": [1, 3, 3]}, "gold 'helpful': [1, 3, 3] is not a ranking"),
        ({"helpful": [1, 2]}, "gold 'helpful': 3 completions but 2 ranks"),
        ({"helpful": [1, 2, 4]}, "gold 'helpful': ranks must be between 1 and 3"),
        ({"style": [1, 2, 3]}, "gold names criteria ['style'] the campaign does not rank by"),
        ({}, "gold must map criteria to ranks"),
        ([1, 2, 3], "'gold' must be an object of criterion -> ranks"),
    ],
)
def test_a_bad_gold_ranking_is_refused_naming_its_line_and_creates_no_campaign(
    workspace, capsys, gold, message
):
    database = f"sqlite:///{workspace / 'bad-gold.db'}"
    items = gold_items(workspace / "bad-gold.jsonl", gold)
    status = reward_service_main(
        ["feedback", "campaign", "create", "gold", "--items", str(items),
         "--criteria", "helpful,harmless", "--db", database]
    )  # fmt: skip
    assert status == 2
    error = capsys.readouterr().err
    assert f"{items}:2: " in error and message in error, error
    assert campaign_names(database) == []


# --- feedback import: a Label Studio project ---


def ranker_annotation(annotation_id: int, user: dict | int, columns: dict, **fields) -> dict:
    """An annotation as Label Studio's JSON export writes it: a Ranker result by `user`."""
    return {
        "id": annotation_id,
        "completed_by": user,
        "result": [
            {
                "from_name": "rank",
                "to_name": "answers",
                "type": "ranker",
                "value": {"ranker": columns},
            }
        ],
        "was_cancelled": False,
        "lead_time": 12.5,
        **fields,
    }


ANN = {"id": 1, "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee"}


def label_studio_export(path: Path, *annotations: dict) -> Path:
    """A List of three items (data field "answers", the prompt in "question"), one task, with
    `annotations`."""
    task = {
        "id": 7,
        "data": {
            "question": "Write a haiku about rain.",
            "answers": [
                {"id": "a", "title": "sample 0", "body": "Rain on the tin roof"},
                {"id": "b", "title": "sample 1", "body": "Wet."},
                {"id": "c", "title": "sample 2", "body": "Grey clouds weep softly"},
            ],
            "other": [{"id": "x", "body": "a second List-like field"}],
        },
        "annotations": list(annotations),
    }
    path.write_text(json.dumps([task]))
    return path


def test_feedback_import_brings_in_a_label_studio_ranking_project_with_its_judgements(workspace):
    # Buckets used as grades: a and c are good, b is bad; the 2nd annotator left c unplaced.
    path = label_studio_export(
        workspace / "label-studio.json",
        ranker_annotation(11, ANN, {"good": ["c", "a"], "bad": ["b"]}),
        ranker_annotation(12, 2, {"_": ["c"], "good": ["b"], "bad": ["a"]}, lead_time=3),
    )
    guidelines = workspace / "label-studio-guidelines.txt"
    guidelines.write_text("Rank as in Label Studio.")
    database = f"sqlite:///{workspace / 'label-studio.db'}"
    printed = feedback_command(
        "import", "--campaign", "haiku", "--label-studio", str(path),
        "--bucket-order", "good,bad", "--ties-within-buckets", "--prompt-field", "question",
        "--items-field", "answers", "--k", "3", "--overlap", "2", "--guidelines", str(guidelines),
        "--db", database,
    )  # fmt: skip
    assert "1 items of 3 completions" in printed and "2 judgements imported" in printed
    store = Store(database)
    try:
        campaign = store.campaign("haiku")
        judgements = store.judgements("haiku")
        raters = [rater.name for rater in store.progress("haiku").per_rater]
    finally:
        store.close()
    assert (campaign.criteria, campaign.k, campaign.overlap) == (["overall"], 3, 2)
    assert campaign.guidelines == "Rank as in Label Studio."
    assert judgements[0].prompt == "Write a haiku about rain."
    assert judgements[0].completions == ["Rain on the tin roof", "Wet.", "Grey clouds weep softly"]
    assert [(j.rater, j.ranks["overall"], j.time_spent_ms) for j in judgements] == [
        ("Ann Lee", [1, 3, 1], 12500),
        ("label-studio user 2", [2, 1, 3], 3000),
    ]
    # Nothing but a display name is stored about a rater: no email anywhere in the database.
    assert raters == ["Ann Lee", "label-studio user 2"]
    files = list(workspace.glob("label-studio.db*"))  # the database, and any WAL beside it
    assert files and all(b"example.com" not in file.read_bytes() for file in files)


def test_a_failed_import_leaves_no_campaign_and_a_taken_name_is_refused(workspace, capsys):
    database = f"sqlite:///{workspace / 'import-failures.db'}"
    options = ["--prompt-field", "question", "--items-field", "answers", "--db", database]
    # Ann ranked the task twice: her second judgement is refused, and with it the whole import.
    twice = label_studio_export(
        workspace / "twice.json",
        ranker_annotation(11, ANN, {"rank": ["c", "a", "b"]}),
        ranker_annotation(12, ANN, {"rank": ["a", "b", "c"]}),
    )
    status = reward_service_main(
        ["feedback", "import", "--campaign", "haiku", "--label-studio", str(twice), *options]
    )
    assert status == 2
    assert "imported judgement 2 (item 0, rater 'Ann Lee')" in capsys.readouterr().err
    assert campaign_names(database) == []
    # The same name imports once the export is right; a second import of it is refused.
    once = label_studio_export(
        workspace / "once.json", ranker_annotation(11, ANN, {"rank": ["c", "a", "b"]})
    )
    feedback_command("import", "--campaign", "haiku", "--label-studio", str(once), *options)
    status = reward_service_main(
        ["feedback", "import", "--campaign", "haiku", "--label-studio", str(once), *options]
    )
    assert status == 2
    assert "a campaign named 'haiku' exists already" in capsys.readouterr().err
    store = Store(database)
    try:
        assert [j.rater for j in store.judgements("haiku")] == ["Ann Lee"]
    finally:
        store.close()


def test_feedback_import_refuses_an_export_it_cannot_read_naming_the_task(workspace, capsys):
    database = f"sqlite:///{workspace / 'import-unreadable.db'}"
    path = label_studio_export(
        workspace / "buckets.json", ranker_annotation(11, ANN, {"good": ["c"], "bad": ["a", "b"]})
    )
    status = reward_service_main(
        ["feedback", "import", "--campaign", "haiku", "--label-studio", str(path),
         "--prompt-field", "question", "--items-field", "answers", "--db", database]
    )  # fmt: skip
    assert status == 2
    assert "task 7: annotation 11: the Ranker has buckets good, bad" in capsys.readouterr().err
    assert campaign_names(database) == []
