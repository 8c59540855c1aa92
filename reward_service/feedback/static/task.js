// The task page: rank an item's completions per criterion, by pointer (mouse, pen, finger) or by
// keyboard alone, then submit the judgement as JSON. Vanilla JS, no build step.
//
// The page shows the completions in the view's shuffled order (view.order[j] is the original
// index of the completion at display position j) and submits ranks in the ORIGINAL order: the
// server never has to know the shuffle to store a judgement, only to study position bias.
//
// Keyboard, on a focused card: ArrowUp/ArrowDown move the focus; Alt+ArrowUp/Alt+ArrowDown move
// the card; Space picks a card up (then the arrows move it, Space or Enter drops it, Escape puts
// it back); Alt+Home/Alt+End move it to the top/bottom; a digit moves it to that place; "t" ties
// it with the card above (again: unties). A live region announces every change.
"use strict";

(function () {
  const root = document.getElementById("task");
  if (!root) return;
  const campaign = root.dataset.campaign;
  const maxCommentChars = Number(root.dataset.maxCommentChars);
  const letters = "ABCDEFGHI";
  const flagNames = ["unsafe", "nonsense", "truncated"];
  const el = (id) => document.getElementById(id);

  let view = null; // what GET /api/campaigns/{name}/next returns
  let lists = {}; // criterion -> [{index: original index, tied: tied with the card above}]
  let ranked = {}; // criterion -> the rater has ranked it (moved, tied or kept its order)
  let grabbed = null; // {criterion, index, saved: the list before the pick-up}
  let busy = false;
  const clock = { elapsedMs: 0, visibleSince: null };

  // --- time spent: counted only while the page is visible --------------------------------------
  function startClock() {
    clock.elapsedMs = 0;
    clock.visibleSince = document.visibilityState === "visible" ? performance.now() : null;
  }
  function elapsedMs() {
    const running = clock.visibleSince === null ? 0 : performance.now() - clock.visibleSince;
    return Math.max(0, Math.round(clock.elapsedMs + running));
  }
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      if (clock.visibleSince === null) clock.visibleSince = performance.now();
    } else if (clock.visibleSince !== null) {
      clock.elapsedMs += performance.now() - clock.visibleSince;
      clock.visibleSince = null;
    }
  });

  // --- announcements and status ----------------------------------------------------------------
  function announce(text) {
    const live = el("announcer");
    // A changed text is announced; the same text twice in a row is not, hence the reset.
    live.textContent = "";
    live.textContent = text;
  }
  // One status at the top of the task (still in view once the next item is loaded), mirrored
  // beside the submit button (hidden from screen readers, which hear the first).
  function setStatus(state, text) {
    for (const status of [el("status"), el("status-inline")]) {
      status.dataset.state = state;
      status.textContent = text;
    }
  }

  // --- the ranking model -----------------------------------------------------------------------
  function letterOf(index) {
    return letters[view.order.indexOf(index)];
  }
  function label(criterion) {
    return criterion.charAt(0).toUpperCase() + criterion.slice(1);
  }
  // Standard competition ranks per display place: a tied card takes the rank of the one above.
  function placeRanks(list) {
    const ranks = [];
    list.forEach((card, place) => {
      ranks.push(place > 0 && card.tied ? ranks[place - 1] : place + 1);
    });
    return ranks;
  }
  // The ranks in the item's ORIGINAL completion order, as the server stores them.
  function originalRanks(list) {
    const byPlace = placeRanks(list);
    const ranks = new Array(list.length);
    list.forEach((card, place) => {
      ranks[card.index] = byPlace[place];
    });
    return ranks;
  }
  // Moving a card takes it out of its tie and puts it between the cards at its new place, which
  // no longer tie across it.
  function move(criterion, from, to) {
    const list = lists[criterion];
    if (to < 0 || to >= list.length || to === from) return false;
    const [card] = list.splice(from, 1);
    if (!card.tied && list[from]) list[from].tied = false; // the group's next card leads it now
    card.tied = false;
    list.splice(to, 0, card);
    if (list[to + 1]) list[to + 1].tied = false;
    list[0].tied = false;
    return true;
  }
  function describePlace(criterion, place) {
    const list = lists[criterion];
    const card = list[place];
    const rank = placeRanks(list)[place];
    const tie = card.tied || (list[place + 1] && list[place + 1].tied) ? ", tied" : "";
    return `Response ${letterOf(card.index)}: place ${place + 1} of ${list.length}, rank ${rank}${tie}, for ${criterion}`;
  }
  function markRanked(criterion) {
    ranked[criterion] = true;
    const section = document.querySelector(`.ranking[data-criterion="${criterion}"]`);
    section.dataset.ranked = "true";
    section.querySelector(".state").textContent = "Ranked";
  }

  // --- rendering -------------------------------------------------------------------------------
  function renderItem() {
    el("prompt").textContent = view.prompt;
    const responses = el("responses");
    responses.replaceChildren();
    view.completions.forEach((text, place) => {
      const index = view.order[place];
      const item = document.createElement("li");
      item.className = "response";
      item.dataset.index = String(index);
      const heading = document.createElement("h3");
      heading.textContent = `Response ${letters[place]}`;
      const body = document.createElement("div");
      body.className = "response-text";
      body.textContent = text;
      const flags = document.createElement("fieldset");
      flags.className = "response-flags";
      const legend = document.createElement("legend");
      legend.textContent = `Flag response ${letters[place]}`;
      flags.append(legend);
      for (const flag of flagNames) {
        const input = document.createElement("input");
        input.type = "checkbox";
        input.className = "flag";
        input.value = flag;
        input.dataset.index = String(index);
        input.id = `flag-${index}-${flag}`;
        const flagLabel = document.createElement("label");
        flagLabel.htmlFor = input.id;
        flagLabel.append(input, ` ${flag}`);
        flags.append(flagLabel);
      }
      item.append(heading, body, flags);
      responses.append(item);
    });
    const rankings = el("rankings");
    rankings.replaceChildren();
    lists = {};
    ranked = {};
    for (const criterion of view.criteria) {
      lists[criterion] = view.order.map((index) => ({ index, tied: false }));
      ranked[criterion] = false;
      const section = document.createElement("section");
      section.className = "ranking";
      section.dataset.criterion = criterion;
      section.dataset.ranked = "false";
      const heading = document.createElement("h3");
      heading.id = `ranking-${criterion}`;
      heading.textContent = label(criterion);
      const hint = document.createElement("p");
      hint.className = "state";
      hint.textContent = "Not ranked yet: best at the top";
      const list = document.createElement("ol");
      list.className = "sortable";
      list.dataset.criterion = criterion;
      list.setAttribute("aria-labelledby", heading.id);
      list.setAttribute("aria-describedby", "sort-help");
      const keep = document.createElement("button");
      keep.type = "button";
      keep.className = "keep-order";
      keep.textContent = "This order is right";
      keep.addEventListener("click", () => {
        markRanked(criterion);
        announce(`${label(criterion)}: order kept`);
      });
      section.append(heading, hint, list, keep);
      rankings.append(section);
      renderList(criterion);
    }
    root.dataset.viewId = view.view_id;
    el("comment").value = "";
    updateCounter();
    for (const radio of document.querySelectorAll('input[name="confidence"]')) radio.checked = false;
    el("skip-reason").value = "";
    el("skip-details").value = "";
    el("skip").open = false;
    grabbed = null;
    startClock();
  }

  function renderList(criterion, focusIndex) {
    const list = document.querySelector(`.sortable[data-criterion="${criterion}"]`);
    const ranks = placeRanks(lists[criterion]);
    list.replaceChildren();
    lists[criterion].forEach((card, place) => {
      const item = document.createElement("li");
      item.className = "card";
      item.tabIndex = 0;
      item.dataset.index = String(card.index);
      item.dataset.letter = letterOf(card.index);
      item.dataset.tied = String(card.tied);
      item.setAttribute("aria-roledescription", "sortable response");
      item.setAttribute("aria-label", describePlace(criterion, place));
      if (grabbed && grabbed.criterion === criterion && grabbed.index === card.index) {
        item.classList.add("grabbed");
      }
      const rank = document.createElement("span");
      rank.className = "rank";
      rank.textContent = String(ranks[place]);
      const grip = document.createElement("span");
      grip.className = "grip";
      grip.setAttribute("aria-hidden", "true");
      grip.textContent = "⠿";
      const letter = document.createElement("span");
      letter.className = "letter";
      letter.textContent = letterOf(card.index);
      const snippet = document.createElement("span");
      snippet.className = "snippet";
      snippet.textContent = view.completions[view.order.indexOf(card.index)];
      const tie = document.createElement("button");
      tie.type = "button";
      tie.className = "tie";
      tie.tabIndex = -1; // the card's "t" key does the same
      tie.textContent = "=";
      tie.title = "Tie with the response above (t)";
      tie.setAttribute("aria-pressed", String(card.tied));
      tie.setAttribute("aria-label", `Tie response ${letterOf(card.index)} with the one above`);
      tie.disabled = place === 0;
      tie.addEventListener("click", () => toggleTie(criterion, card.index));
      item.append(rank, grip, letter, snippet, tie);
      item.addEventListener("keydown", (event) => onCardKey(event, criterion, card.index));
      item.addEventListener("pointerdown", (event) => onPointerDown(event, criterion, card.index));
      list.append(item);
    });
    if (focusIndex !== undefined) {
      list.querySelector(`.card[data-index="${focusIndex}"]`).focus();
    }
  }

  function placeOf(criterion, index) {
    return lists[criterion].findIndex((card) => card.index === index);
  }

  function toggleTie(criterion, index) {
    const place = placeOf(criterion, index);
    if (place === 0) {
      announce(`Response ${letterOf(index)} is at the top: nothing above to tie with`);
      return;
    }
    const card = lists[criterion][place];
    card.tied = !card.tied;
    markRanked(criterion);
    renderList(criterion, index);
    const above = letterOf(lists[criterion][place - 1].index);
    announce(
      card.tied
        ? `Response ${letterOf(index)} tied with response ${above}, rank ${placeRanks(lists[criterion])[place]}, for ${criterion}`
        : `Response ${letterOf(index)} no longer tied with response ${above}, rank ${place + 1}, for ${criterion}`,
    );
  }

  function moveTo(criterion, index, to) {
    const from = placeOf(criterion, index);
    if (!move(criterion, from, to)) {
      announce(`${describePlace(criterion, from)}: it cannot move further`);
      return;
    }
    markRanked(criterion);
    renderList(criterion, index);
    announce(`Moved. ${describePlace(criterion, placeOf(criterion, index))}`);
  }

  // --- keyboard --------------------------------------------------------------------------------
  function onCardKey(event, criterion, index) {
    const place = placeOf(criterion, index);
    const last = lists[criterion].length - 1;
    const holding = grabbed && grabbed.criterion === criterion && grabbed.index === index;
    const key = event.key;
    let handled = true;
    if (key === " " || (key === "Enter" && holding)) {
      if (holding) {
        grabbed = null;
        markRanked(criterion);
        renderList(criterion, index);
        announce(`Dropped. ${describePlace(criterion, placeOf(criterion, index))}`);
      } else {
        grabbed = { criterion, index, saved: lists[criterion].map((card) => ({ ...card })) };
        renderList(criterion, index);
        announce(
          `Picked up response ${letterOf(index)}, place ${place + 1} of ${last + 1}. ` +
            "Arrow keys move it, Space drops it, Escape puts it back.",
        );
      }
    } else if (key === "Escape" && holding) {
      lists[criterion] = grabbed.saved;
      grabbed = null;
      renderList(criterion, index);
      announce(`Put back. ${describePlace(criterion, placeOf(criterion, index))}`);
    } else if ((key === "ArrowUp" || key === "ArrowDown") && (event.altKey || holding)) {
      moveTo(criterion, index, place + (key === "ArrowUp" ? -1 : 1));
    } else if ((key === "Home" || key === "End") && (event.altKey || holding)) {
      moveTo(criterion, index, key === "Home" ? 0 : last);
    } else if (key === "ArrowUp" || key === "ArrowDown") {
      const next = lists[criterion][place + (key === "ArrowUp" ? -1 : 1)];
      if (next) focusCard(criterion, next.index);
    } else if (/^[1-9]$/.test(key) && !event.altKey && !event.ctrlKey && !event.metaKey) {
      if (Number(key) - 1 <= last) moveTo(criterion, index, Number(key) - 1);
    } else if ((key === "t" || key === "T") && !event.ctrlKey && !event.metaKey) {
      toggleTie(criterion, index);
    } else {
      handled = false;
    }
    if (handled) event.preventDefault();
  }

  function focusCard(criterion, index) {
    document
      .querySelector(`.sortable[data-criterion="${criterion}"] .card[data-index="${index}"]`)
      .focus();
  }

  // --- pointer (mouse, pen, touch): pointer events, which WebDriver can drive ------------------
  // A mouse drags a card from anywhere on it; a finger from its grip, so that swiping a card
  // still scrolls the page on a phone.
  function onPointerDown(event, criterion, index) {
    if (event.button !== 0 || event.target.closest("button")) return;
    if (event.pointerType !== "mouse" && !event.target.closest(".grip")) return;
    const list = document.querySelector(`.sortable[data-criterion="${criterion}"]`);
    const card = event.currentTarget;
    const drag = { startY: event.clientY, y: event.clientY, started: false, to: null };
    card.focus();
    event.preventDefault();

    function target(y) {
      // The new place: how many of the other cards have their middle above the pointer.
      let to = 0;
      for (const other of list.querySelectorAll(".card")) {
        if (other === card) continue;
        const box = other.getBoundingClientRect();
        if (box.top + box.height / 2 < y) to += 1;
      }
      return to;
    }
    function showDrop(to) {
      const others = [...list.querySelectorAll(".card")].filter((other) => other !== card);
      for (const other of others) other.classList.remove("drop-before", "drop-after");
      if (to < others.length) others[to].classList.add("drop-before");
      else if (others.length) others[others.length - 1].classList.add("drop-after");
    }
    function onMove(moveEvent) {
      if (moveEvent.pointerId !== event.pointerId) return;
      drag.y = moveEvent.clientY;
      if (!drag.started && Math.abs(drag.y - drag.startY) < 4) return;
      drag.started = true;
      card.classList.add("dragging");
      card.style.transform = `translateY(${drag.y - drag.startY}px)`;
      drag.to = target(drag.y);
      showDrop(drag.to);
      moveEvent.preventDefault();
    }
    function onUp(upEvent) {
      if (upEvent.pointerId !== event.pointerId) return;
      document.removeEventListener("pointermove", onMove);
      document.removeEventListener("pointerup", onUp);
      document.removeEventListener("pointercancel", onUp);
      card.classList.remove("dragging");
      card.style.transform = "";
      if (!drag.started || upEvent.type === "pointercancel") {
        renderList(criterion, index);
        return;
      }
      const to = target(upEvent.clientY);
      const from = placeOf(criterion, index);
      if (to === from) {
        markRanked(criterion);
        renderList(criterion, index);
        announce(`${describePlace(criterion, from)}: not moved`);
      } else {
        moveTo(criterion, index, to);
      }
    }
    document.addEventListener("pointermove", onMove);
    document.addEventListener("pointerup", onUp);
    document.addEventListener("pointercancel", onUp);
  }

  // --- the judgement ---------------------------------------------------------------------------
  function flags() {
    const chosen = {};
    for (const input of document.querySelectorAll("input.flag:checked")) {
      (chosen[input.dataset.index] ||= []).push(input.value);
    }
    return chosen;
  }
  function comment() {
    return el("comment").value;
  }
  function updateCounter() {
    el("comment-counter").textContent = `${comment().length} / ${maxCommentChars}`;
  }
  el("comment").addEventListener("input", updateCounter);

  async function send(body) {
    if (busy) return;
    busy = true;
    el("submit").disabled = true;
    el("skip-submit").disabled = true;
    setStatus("saving", "Saving…");
    let response;
    try {
      response = await fetch(`/api/views/${encodeURIComponent(view.view_id)}/judgement`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ ...body, time_spent_ms: elapsedMs() }),
      });
    } catch (error) {
      fail("Not saved: the server could not be reached. Try again.");
      return;
    }
    if (!response.ok) {
      const detail = await errorDetail(response);
      if (response.status === 409) {
        // This page was already submitted (another tab, a double click): move on.
        setStatus("error", `Not saved again: ${detail}`);
        busy = false;
        await loadNext();
        return;
      }
      fail(`Not saved: ${detail}`);
      return;
    }
    // Only now, after the server's 2xx (which comes after its commit), is the judgement saved.
    setStatus("saved", body.skipped ? "Saved (skipped)." : "Saved.");
    busy = false;
    await loadNext();
  }

  function fail(text) {
    setStatus("error", text);
    busy = false;
    el("submit").disabled = false;
    el("skip-submit").disabled = false;
  }

  async function errorDetail(response) {
    try {
      const body = await response.json();
      return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (error) {
      return `the server answered ${response.status}`;
    }
  }

  async function loadNext() {
    let response;
    try {
      response = await fetch(`/api/campaigns/${encodeURIComponent(campaign)}/next`, {
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
    } catch (error) {
      el("next-error").textContent = "Could not load the next item: reload the page.";
      return;
    }
    if (response.status === 204) {
      showDone();
      return;
    }
    if (!response.ok) {
      el("next-error").textContent = `Could not load the next item: ${await errorDetail(response)}`;
      return;
    }
    el("next-error").textContent = "";
    view = await response.json();
    renderItem();
    el("submit").disabled = false;
    el("skip-submit").disabled = false;
    el("status").scrollIntoView({ block: "nearest" });
  }

  function showDone() {
    el("item").hidden = true;
    el("done").hidden = false;
    root.dataset.viewId = "";
    view = null;
  }

  el("submit").addEventListener("click", () => {
    const missing = view.criteria.filter((criterion) => !ranked[criterion]);
    const confidence = document.querySelector('input[name="confidence"]:checked');
    if (missing.length || !confidence) {
      const problems = [];
      if (missing.length) problems.push(`rank ${missing.join(", ")} (or press "This order is right")`);
      if (!confidence) problems.push("say how clear your ranking is");
      setStatus("error", `Not sent yet: ${problems.join("; ")}.`);
      return;
    }
    if (comment().length > maxCommentChars) {
      setStatus("error", `Not sent yet: the comment is longer than ${maxCommentChars} characters.`);
      return;
    }
    const ranks = {};
    for (const criterion of view.criteria) ranks[criterion] = originalRanks(lists[criterion]);
    send({
      ranks,
      skipped: false,
      skip_reason: null,
      flags: flags(),
      confidence: Number(confidence.value),
      comment: comment(),
    });
  });

  el("skip-submit").addEventListener("click", () => {
    const reason = el("skip-reason").value;
    if (!reason) {
      setStatus("error", "Not sent yet: choose why you skip this item.");
      el("skip-reason").focus();
      return;
    }
    const details = el("skip-details").value.trim();
    send({
      ranks: null,
      skipped: true,
      skip_reason: details ? `${reason}: ${details}` : reason,
      flags: flags(),
      confidence: null,
      comment: comment(),
    });
  });

  const first = JSON.parse(el("task-data").textContent);
  if (first) {
    view = first;
    renderItem();
  } else {
    showDone();
  }
})();
