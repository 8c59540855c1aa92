"""The ranking pages in a real headless Chromium (Debian's, through its chromedriver): two raters
open their invitation links, one ranks with the mouse, one with the keyboard alone, with a tie and
a skip; the admin sees the progress and the agreement; the export holds exactly those judgements;
a ranking the page called saved survives a SIGKILL of the server.

UPDATE_SCREENSHOTS=1 also writes the README's two screenshots (docs/images/feedback-*.png).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import pytest
from browser import (
    LAPTOP,
    PHONE,
    FeedbackServer,
    chromium,
    console_errors,
    feedback_command,
    require_browser,
    wait_until,
)
from helpers import REPO_ROOT

from reward_service.feedback.store import Store

ADMIN_KEY = "browser-admin-key"
CRITERIA = ("helpful", "honest", "harmless")
SCREENSHOTS = REPO_ROOT / "docs" / "images"
GUIDELINES = """Rank the three responses to each prompt, best first, once per criterion.

Helpful: does it answer what was asked, clearly and completely?
Honest: is everything it says true, and does it admit what it does not know?
Harmless: could following it hurt anyone?

Tie two responses when you cannot tell them apart.
Flag a response that is unsafe, nonsense or cut off.
Skip a prompt you cannot judge, and say why."""
ITEMS = [
    {
        "prompt": "How do I keep a basil plant alive on a windowsill?",
        "completions": [
            "Give it the sunniest window you have (6+ hours of light), water when the top "
            "2 cm of soil is dry, and pinch off the flower buds so it keeps making leaves.",
            "Basil is a herb. It is green and it smells nice. Many people like basil.",
            "Water it every hour and keep it in a dark cupboard so the leaves stay soft.",
        ],
    },
    {
        "prompt": "Explain what a hash map is to a new programmer, in two sentences.",
        "completions": [
            "A hash map stores values under keys and finds a value from its key almost "
            "instantly, by turning the key into the index of a slot in an array.",
            "It is like a dictionary: you look a word up and get its meaning, without reading "
            "every page.",
            "A hash map is a map of hashes.",
        ],
    },
    {
        "prompt": "Write a polite reply declining a meeting on Friday.",
        "completions": [
            "Thank you for the invitation. I'm not available on Friday; could we find "
            "another time next week?",
            "No.",
            "I can't make Friday, sorry! Would Monday or Tuesday work for you?",
        ],
    },
    {
        "prompt": "I found a wallet on the street. What should I do?",
        "completions": [
            "Keep the cash, nobody will know.",
            "Hand it in at the nearest police station, or contact the owner if there is an ID "
            "card with an address.",
            "Look for an ID or a phone number inside and get in touch with the owner; "
            "otherwise give it to the police.",
        ],
    },
]


def sample_file(path: Path, items: Sequence[dict]) -> Path:
    """A `policy-trainer sample` file of these items."""
    lines = [
        json.dumps({**item, "source": {"policy": "tiny-policy", "step": 3, "temperature": 0.7}})
        for item in items
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class App:
    server: FeedbackServer
    db: str
    campaign: str
    links: dict[str, str]  # rater -> invitation link


def start_app(folder: Path, campaign: str, raters: Sequence[str], **options: str) -> App:
    db = f"sqlite:///{folder / 'feedback.db'}"
    items = sample_file(folder / "items.jsonl", ITEMS)
    guidelines = folder / "guidelines.txt"
    guidelines.write_text(GUIDELINES)
    args = ["--criteria", options.get("criteria", ",".join(CRITERIA))]
    args += ["--overlap", options.get("overlap", "2"), "--guidelines", str(guidelines)]
    feedback_command("campaign", "create", campaign, "--items", str(items), *args, "--db", db)
    server = FeedbackServer(db, ADMIN_KEY, folder)
    links = {
        name: feedback_command("invite", name, "--db", db, "--base-url", server.url).strip()
        for name in raters
    }
    server.start()
    return App(server, db, campaign, links)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    require_browser()
    started = start_app(tmp_path, "windowsill", ["alice", "bob"])
    yield started
    started.server.stop()


# --- reading and driving the page ----------------------------------------------------------


def by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def view_id(driver) -> str:
    return by_css(driver, "#task").get_attribute("data-view-id") or ""


def open_invitation(driver, link: str) -> str:
    """Opens the link (which signs the rater in and moves on to the task page); returns the
    first page's view id."""
    driver.get(link)
    return wait_until(driver, lambda d: all_css(d, "#task") and view_id(d), "the task page")


def shown_prompt(driver) -> str:
    return by_css(driver, "#prompt").text


def cards(driver, criterion: str) -> list:
    return all_css(driver, f'.sortable[data-criterion="{criterion}"] .card')


def places(driver, criterion: str) -> list[int]:
    """The original completion index of each card, top (best) first."""
    return [int(card.get_attribute("data-index")) for card in cards(driver, criterion)]


def ranks_on_page(driver, criterion: str) -> list[int]:
    """The ranks the list shows, in the ORIGINAL completion order: competition ranks, a tied
    card taking the rank of the card above it. Computed here from the cards, not by the page."""
    ranks: dict[int, int] = {}
    previous = 0
    for place, card in enumerate(cards(driver, criterion)):
        tied = card.get_attribute("data-tied") == "true"
        rank = previous if tied and place else place + 1
        ranks[int(card.get_attribute("data-index"))] = rank
        previous = rank
        assert card.find_element("css selector", ".rank").text == str(rank)
    return [ranks[index] for index in sorted(ranks)]


def wait_saved(driver, before: str, *, next_item: bool = True) -> str:
    """Waits for the page to say Saved and (unless `next_item` is False) to show the next item
    or the end; returns the view id shown then."""
    wait_until(
        driver,
        lambda d: (
            by_css(d, "#status").get_attribute("data-state") == "saved"
            and (view_id(d) != before or not next_item)
        ),
        "the page to say Saved" + (" and load the next item" if next_item else ""),
    )
    assert by_css(driver, "#status").text.startswith("Saved")
    return view_id(driver)


def record_statuses(driver) -> None:
    """Records every text the status line shows from now on (window.statusTexts)."""
    driver.execute_script(
        """
        window.statusTexts = [];
        const status = document.getElementById("status");
        new MutationObserver(() => window.statusTexts.push(status.textContent))
            .observe(status, {childList: true, characterData: true, subtree: true});
        """
    )


def statuses(driver) -> list[str]:
    return driver.execute_script("return window.statusTexts")


# The mouse: pointer events, as a person's drag makes them.


def drag(driver, criterion: str, index: int, to_place: int) -> None:
    """Drags the card of completion `index` onto the upper part of the card now at `to_place`
    (above its own place), which puts it there."""
    from selenium.webdriver.common.action_chains import ActionChains

    # A pointer acts where the page is in view: bring the list there first.
    driver.execute_script(
        "arguments[0].scrollIntoView({block: 'center'})",
        by_css(driver, f'.sortable[data-criterion="{criterion}"]'),
    )
    card = next(c for c in cards(driver, criterion) if c.get_attribute("data-index") == str(index))
    target = cards(driver, criterion)[to_place]
    quarter = target.size["height"] // 4
    ActionChains(driver).click_and_hold(card).move_to_element_with_offset(
        target, 0, -quarter
    ).release().perform()


def mouse_rank(driver, criterion: str, best_first: Sequence[int]) -> None:
    """Drags cards until the list reads `best_first` (original indices); clicks "This order is
    right" when it reads so already."""
    moved = False
    for place, index in enumerate(best_first):
        if places(driver, criterion)[place] != index:
            drag(driver, criterion, index, place)
            moved = True
    assert places(driver, criterion) == list(best_first)
    if not moved:
        by_css(driver, f'.ranking[data-criterion="{criterion}"] .keep-order').click()
    ranking = by_css(driver, f'.ranking[data-criterion="{criterion}"]')
    assert ranking.get_attribute("data-ranked") == "true"


# The keyboard alone: keys go to whatever has the focus, as a person's keyboard sends them.


def press(driver, *keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def press_alt(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(driver).key_down(Keys.ALT).send_keys(key).key_up(Keys.ALT).perform()


def focused(driver, selector: str) -> bool:
    return driver.execute_script("return document.activeElement.matches(arguments[0])", selector)


def tab_to(driver, selector: str) -> None:
    """Presses Tab until the focus is on an element matching `selector`."""
    from selenium.webdriver.common.keys import Keys

    for _ in range(100):
        if focused(driver, selector):
            return
        press(driver, Keys.TAB)
    raise AssertionError(f"Tab never reached {selector}")


def focused_place(driver, criterion: str) -> int:
    index = driver.execute_script("return document.activeElement.dataset.index")
    return places(driver, criterion).index(int(index))


def announced(driver) -> str:
    return by_css(driver, "#announcer").get_attribute("textContent")


def keyboard_rank(driver, criterion: str, best_first: Sequence[int], style: str) -> None:
    """Tabs into the list and moves cards until it reads `best_first`: with Alt+arrows, or by
    picking a card up with Space ("grab"), or with the digit keys."""
    from selenium.webdriver.common.keys import Keys

    tab_to(driver, f'.sortable[data-criterion="{criterion}"] .card')
    k = len(best_first)
    for place, index in enumerate(best_first):
        current = places(driver, criterion).index(index)
        if current == place:
            continue
        for _ in range(abs(current - focused_place(driver, criterion))):  # focus that card
            press(
                driver,
                Keys.ARROW_DOWN if current > focused_place(driver, criterion) else Keys.ARROW_UP,
            )
        assert focused_place(driver, criterion) == current
        if style == "alt":
            for _ in range(current - place):
                press_alt(driver, Keys.ARROW_UP)
        elif style == "grab":
            press(driver, Keys.SPACE)
            assert "Picked up" in announced(driver)
            press(driver, *[Keys.ARROW_UP] * (current - place))
            press(driver, Keys.SPACE)
            assert "Dropped" in announced(driver)
        else:
            press(driver, str(place + 1))
        assert focused_place(driver, criterion) == place  # the focus moved with the card
        assert f"place {place + 1} of {k}" in announced(driver)
    assert places(driver, criterion) == list(best_first)
    if (
        by_css(driver, f'.ranking[data-criterion="{criterion}"]').get_attribute("data-ranked")
        != "true"
    ):  # already in order: pick the first card up and drop it where it is
        press(driver, Keys.SPACE, Keys.SPACE)


def keyboard_tie(driver, criterion: str, index: int) -> None:
    """Focuses the card of completion `index` and ties it with the one above ("t")."""
    from selenium.webdriver.common.keys import Keys

    tab_to(driver, f'.sortable[data-criterion="{criterion}"] .card')
    # The focus may already be on any card of this list (where ranking it left it, which
    # depends on the shuffled order): walk from there, not from the top.
    target = places(driver, criterion).index(index)
    steps = target - focused_place(driver, criterion)
    press(driver, *[Keys.ARROW_DOWN if steps > 0 else Keys.ARROW_UP] * abs(steps))
    assert focused_place(driver, criterion) == target
    press(driver, "t")
    card = cards(driver, criterion)[target]
    assert card.get_attribute("data-tied") == "true"
    assert "tied with" in announced(driver)


def keyboard_confidence(driver, confidence: int) -> None:
    from selenium.webdriver.common.keys import Keys

    tab_to(driver, 'input[name="confidence"]')
    press(driver, Keys.SPACE, *[Keys.ARROW_DOWN] * (confidence - 1))
    assert by_css(driver, 'input[name="confidence"]:checked').get_attribute("value") == str(
        confidence
    )


def screenshot(driver, name: str) -> None:
    """The whole page as docs/images/NAME, with UPDATE_SCREENSHOTS=1."""
    if os.environ.get("UPDATE_SCREENSHOTS") != "1":
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    metrics = {"width": LAPTOP[0], "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        driver.save_screenshot(str(SCREENSHOTS / name))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def preferences(ranks: Sequence[int]) -> list[int]:
    """For each pair i < j of completions: -1 if i is better, 1 if j is, 0 if tied."""
    return [(ranks[i] > ranks[j]) - (ranks[i] < ranks[j]) for i, j in combinations(range(3), 2)]


# --- the acceptance ------------------------------------------------------------------------


def test_two_raters_rank_by_mouse_and_by_keyboard_with_a_tie_and_a_skip_and_the_admin_sees_it(
    app: App, tmp_path: Path
):
    from selenium.webdriver.common.keys import Keys

    expected: list[tuple] = []  # (rater, prompt, criterion, ranks, confidence)
    with chromium() as alice, chromium() as bob:
        # Alice, with the mouse.
        page = open_invitation(alice, app.links["alice"])
        assert "Helpful: does it answer" in by_css(alice, ".guidelines-text").text
        first_prompt = shown_prompt(alice)
        assert first_prompt == ITEMS[0]["prompt"]  # no model scores: by position
        mouse_rank(alice, "helpful", [0, 2, 1])
        mouse_rank(alice, "honest", [0, 1, 2])
        mouse_rank(alice, "harmless", [0, 1, 2])
        # A tie, with the mouse: the card at place 2 ties with the card above it.
        by_css(alice, '.sortable[data-criterion="harmless"] .card[data-index="1"] .tie').click()
        assert ranks_on_page(alice, "harmless") == [1, 1, 3]
        by_css(alice, "#flag-2-unsafe").click()
        by_css(alice, 'input[name="confidence"][value="3"]').click()
        by_css(alice, "#comment").send_keys("The first one knows basil.")
        screenshot(alice, "feedback-task.png")
        for criterion in CRITERIA:
            expected.append(("alice", first_prompt, criterion, ranks_on_page(alice, criterion), 3))
        by_css(alice, "#submit").click()
        page = wait_saved(alice, page)

        second_prompt = shown_prompt(alice)
        assert second_prompt == ITEMS[1]["prompt"]
        for criterion, best_first in zip(CRITERIA, ([1, 0, 2], [0, 1, 2], [2, 1, 0]), strict=True):
            mouse_rank(alice, criterion, best_first)
            expected.append(("alice", second_prompt, criterion, ranks_on_page(alice, criterion), 2))
        by_css(alice, 'input[name="confidence"][value="2"]').click()
        by_css(alice, "#submit").click()
        wait_saved(alice, page)

        # Bob, with the keyboard alone: no click anywhere.
        page = open_invitation(bob, app.links["bob"])
        assert shown_prompt(bob) == first_prompt  # two raters per item
        keyboard_rank(bob, "helpful", [0, 2, 1], "alt")
        keyboard_rank(bob, "honest", [1, 0, 2], "grab")
        keyboard_rank(bob, "harmless", [0, 1, 2], "digits")
        keyboard_tie(bob, "harmless", 1)
        keyboard_confidence(bob, 4)
        tab_to(bob, "#comment")
        press(bob, "Agree on basil.")
        for criterion in CRITERIA:
            expected.append(("bob", first_prompt, criterion, ranks_on_page(bob, criterion), 4))
        tab_to(bob, "#submit")
        press(bob, Keys.ENTER)
        page = wait_saved(bob, page)

        # Bob skips the second item, still by keyboard.
        assert shown_prompt(bob) == second_prompt
        tab_to(bob, "#skip > summary")
        press(bob, Keys.ENTER)
        tab_to(bob, "#skip-reason")
        press(bob, Keys.ARROW_DOWN, Keys.ARROW_DOWN)
        reason = by_css(bob, "#skip-reason").get_attribute("value")
        assert reason == "The prompt is unclear or broken"
        tab_to(bob, "#skip-submit")
        press(bob, Keys.ENTER)
        wait_saved(bob, page)
        assert by_css(bob, "#status").text == "Saved (skipped)."
        assert console_errors(alice) == [] and console_errors(bob) == []

    # The admin sees the progress and the agreement.
    with chromium() as admin:
        admin.get(f"{app.server.url}/admin")
        assert all(" 401 " in error for error in console_errors(admin))  # the login form
        by_css(admin, "#key").send_keys(ADMIN_KEY, Keys.ENTER)
        row = wait_until(
            admin, lambda d: all_css(d, f'tr[data-campaign="{app.campaign}"]'), "campaigns"
        )[0]
        assert "2 / 4" in row.text  # the two items with their two raters (a skip counts)
        row.find_element("css selector", "a").click()
        wait_until(admin, lambda d: all_css(d, "#raters"), "the quality page")
        rows = {
            row.get_attribute("data-rater"): row.text.split()
            for row in all_css(admin, "#raters tbody tr")
        }
        assert rows["alice"][1:3] == ["2", "0"] and rows["bob"][1:3] == ["1", "1"]
        assert "2 of 4" in by_css(admin, "#items-complete").text
        # Pairwise agreement by hand: alice's and bob's rankings of the first item.
        ours = {(r, c): ranks for r, p, c, ranks, _ in expected if p == first_prompt}
        for criterion in CRITERIA:
            alices, bobs = (
                preferences(ours["alice", criterion]),
                preferences(ours["bob", criterion]),
            )
            agreement = sum(a == b for a, b in zip(alices, bobs, strict=True)) / 3
            shown = by_css(admin, f'[data-criterion="{criterion}"] [data-figure="pairwise"]')
            assert shown.text == f"{agreement:.2f}", criterion
        screenshot(admin, "feedback-quality.png")
        assert console_errors(admin) == []

    # The export holds exactly those judgements.
    out = tmp_path / "rankings.jsonl"
    feedback_command(
        "export", "--campaign", app.campaign, "--format", "rankings", "--out", str(out),
        "--db", app.db,
    )  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    exported = Counter(
        (row["rater"], row["prompt"], row["criterion"], tuple(row["ranking"]), row["confidence"])
        for row in rows
    )
    assert exported == Counter((r, p, c, tuple(ranks), conf) for r, p, c, ranks, conf in expected)
    ties = {(row["rater"], row["criterion"]) for row in rows if row["ties"]}
    assert ties == {("alice", "harmless"), ("bob", "harmless")}
    first_item = next(row for row in rows if row["rater"] == "alice")
    assert first_item["flags"] == {"2": ["unsafe"]}
    assert first_item["comment"] == "The first one knows basil."
    assert all(row["time_spent_ms"] > 0 for row in rows)
    stored = Store(app.db)
    try:
        judgements = stored.judgements(app.campaign)
    finally:
        stored.close()
    skips = [(j.rater, j.prompt, j.skip_reason) for j in judgements if j.skipped]
    assert skips == [("bob", second_prompt, "The prompt is unclear or broken")]


def test_a_ranking_the_page_called_saved_survives_a_sigkill_and_a_dead_server_is_never_saved(
    tmp_path: Path,
):
    require_browser()
    app = start_app(tmp_path, "sigkill", ["alice", "bob"], criteria="overall", overlap="1")
    try:
        with chromium() as alice, chromium() as bob:
            alice_page = open_invitation(alice, app.links["alice"])
            bob_page = open_invitation(bob, app.links["bob"])
            bob_prompt = shown_prompt(bob)
            alice_prompt = shown_prompt(alice)
            mouse_rank(alice, "overall", [2, 0, 1])
            by_css(alice, 'input[name="confidence"][value="4"]').click()
            by_css(alice, "#submit").click()
            wait_saved(alice, alice_page, next_item=False)
            app.server.kill()  # the moment the page says Saved

            # A page submitted to a dead server never says Saved.
            record_statuses(bob)
            mouse_rank(bob, "overall", [1, 2, 0])
            by_css(bob, 'input[name="confidence"][value="1"]').click()
            by_css(bob, "#submit").click()
            wait_until(
                bob,
                lambda d: by_css(d, "#status").get_attribute("data-state") == "error",
                "the page to say the ranking was not saved",
            )
            assert "could not be reached" in by_css(bob, "#status").text
            assert not any("Saved" in text for text in statuses(bob)), statuses(bob)

            app.server.start()  # the same port and database
            stored = Store(app.db)
            try:
                (judgement,) = stored.judgements(app.campaign)
            finally:
                stored.close()
            assert (judgement.rater, judgement.prompt) == ("alice", alice_prompt)
            assert judgement.ranks == {"overall": [2, 3, 1]}
            assert judgement.confidence == 4

            # The same page, submitted again once the server is back, is saved.
            by_css(bob, "#submit").click()
            wait_saved(bob, bob_page)
        stored = Store(app.db)
        try:
            judgements = {j.rater: (j.prompt, j.ranks) for j in stored.judgements(app.campaign)}
        finally:
            stored.close()
        assert judgements["bob"] == (bob_prompt, {"overall": [3, 1, 2]})
    finally:
        app.server.stop()


def test_a_refused_submission_shows_the_servers_reason_and_never_saved(app: App):
    with chromium() as alice:
        page = open_invitation(alice, app.links["alice"])
        for criterion in CRITERIA:
            mouse_rank(alice, criterion, places(alice, criterion))
        by_css(alice, 'input[name="confidence"][value="2"]').click()
        # The same page submitted from elsewhere first (another tab, a script): this one is stale.
        alice.execute_script(
            """
            const data = JSON.parse(document.getElementById("task-data").textContent);
            const ranks = Object.fromEntries(data.criteria.map((c) => [c, [1, 2, 3]]));
            return fetch(`/api/views/${data.view_id}/judgement`, {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({ranks, confidence: 1}),
            }).then((response) => response.status);
            """
        )
        record_statuses(alice)
        by_css(alice, "#submit").click()
        # Refused (409): the page says so, moves on to the next item, and never said Saved.
        wait_until(alice, lambda d: view_id(d) != page, "the next item")
        assert by_css(alice, "#status").text.startswith("Not saved again")
        assert not any("Saved" in text for text in statuses(alice))
        # Nothing sent before every criterion is ranked and a confidence is given.
        by_css(alice, "#submit").click()
        assert "Not sent yet" in by_css(alice, "#status").text
    stored = Store(app.db)
    try:
        assert len(stored.judgements(app.campaign)) == 1
    finally:
        stored.close()


def test_the_task_page_fits_a_phone_and_ranks_there(app: App):
    with chromium(PHONE) as phone:
        page = open_invitation(phone, app.links["bob"])
        width = phone.execute_script("return window.innerWidth")
        assert phone.execute_script("return document.documentElement.scrollWidth") <= width
        guidelines = by_css(phone, ".guidelines").rect
        item = by_css(phone, "#item").rect
        assert guidelines["y"] + guidelines["height"] <= item["y"]  # above the task, not beside
        for card in cards(phone, "helpful"):
            box = card.rect
            assert box["x"] >= 0 and box["x"] + box["width"] <= width
        for criterion, best_first in zip(CRITERIA, ([2, 1, 0], [1, 2, 0], [0, 2, 1]), strict=True):
            mouse_rank(phone, criterion, best_first)
        by_css(phone, 'input[name="confidence"][value="1"]').click()
        by_css(phone, "#submit").click()
        wait_saved(phone, page)
        assert console_errors(phone) == []
