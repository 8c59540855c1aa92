"""The feedback store: the only code that reads and writes the feedback database.

Everything a caller gets back is a plain frozen dataclass (no live database rows), and every
refusal is a :class:`FeedbackError` with the HTTP status it means, so the web app maps errors in
one place and the CLI prints the message.

Ranks are "standard competition" ranks in the item's original completion order: 1 = best, tied
completions share a rank and the next rank skips (``[1, 1, 3, 4]``). A dense tie ranking
(``[1, 1, 2]``) is accepted and stored as its competition form (``[1, 1, 3]``).

A served task page (a View) reserves its item for ``reservation_s`` (a lease, as Label Studio
locks a task for the annotator who opened it): while it runs, the item counts that rater against
the campaign's overlap, and the rater asking for their next item gets that same page back. An
expired page reserves nothing, but its late submission is still stored if the rater has not
judged the item since, even past the overlap: nothing a rater submits is lost. Time is the
store's ``clock`` (tests replace it); every timestamp is stored in UTC.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import random
import secrets
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Engine, distinct, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from reward_service.errors import RewardServiceError
from reward_service.feedback.db import NAME_CHARS, Campaign, Item, Judgement, Rater, View, connect
from reward_service.feedback.db import upgrade as upgrade_schema

DEFAULT_CRITERIA: tuple[str, ...] = ("helpful", "honest", "harmless")  # the seed's three
FLAGS: tuple[str, ...] = ("unsafe", "nonsense", "truncated")
# Up to 9 completions: a rater ranks by keyboard with the digit keys 1-9.
MIN_K, MAX_K = 2, 9
MIN_CONFIDENCE, MAX_CONFIDENCE = 1, 4
DEFAULT_MAX_COMMENT_CHARS = 2000
DEFAULT_RESERVATION_S = 1800  # how long a served page keeps its item for its rater

_SHUFFLE = random.SystemRandom()  # display orders when the caller gives no seeded rng


# --- errors ---------------------------------------------------------------------------------


class FeedbackError(RewardServiceError):
    """A request the store refuses; ``status_code`` is the HTTP status it means."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(FeedbackError):
    """No campaign, item or view of that name or id (404)."""

    status_code = 404


class Forbidden(FeedbackError):
    """Not a rater's token, or another rater's page (403)."""

    status_code = 403


class Conflict(FeedbackError):
    """The name is taken, the page was already submitted, or the rater judged the item (409)."""

    status_code = 409


class Invalid(FeedbackError):
    """The input breaks a rule: not a ranking of the completions, too long a comment (422)."""

    status_code = 422


# --- what callers pass and get back ---------------------------------------------------------


@dataclass(frozen=True)
class NewItem:
    """An item to add: a prompt and the campaign's K completions of it."""

    prompt: str
    completions: list[str]
    source: dict[str, Any] | None = None  # where the completions came from; never shown to raters
    model_scores: list[float] | None = None  # the reward model's score of each; never shown
    gold: dict[str, list[int]] | None = None  # criterion -> the known ranks of a gold item


@dataclass(frozen=True)
class Submission:
    """What a task page sends: ranks per criterion in the ORIGINAL completion order, or a skip.

    A skip stores no ranks and no confidence (whatever was sent); flags and a comment are kept.
    """

    ranks: dict[str, list[int]] | None = None
    skipped: bool = False
    skip_reason: str | None = None
    flags: dict[str, list[str]] = field(default_factory=dict)  # completion index -> flags
    confidence: int | None = None  # 1..4, required unless skipped
    comment: str = ""
    time_spent_ms: int = 0


class ExternalJudgement(Protocol):
    """A judgement made in another tool (``label_studio.ImportedJudgement`` is one)."""

    item_index: int  # the item's position in the campaign
    rater: str  # the rater's name
    ranks: list[int] | None  # one ranking, original order; None when skipped
    skipped: bool
    comment: str
    time_spent_ms: int | None  # None when the tool did not record it


@dataclass(frozen=True)
class CampaignInfo:
    id: int
    name: str
    guidelines: str
    criteria: list[str]
    k: int
    overlap: int
    created_at: datetime


@dataclass(frozen=True)
class ItemInfo:
    id: int
    position: int
    prompt: str
    completions: list[str]
    source: dict[str, Any] | None
    model_scores: list[float] | None
    gold: dict[str, list[int]] | None


@dataclass(frozen=True)
class RaterInfo:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ViewInfo:
    """A task page to show: nothing in it may tell the rater about models, scores or gold."""

    view_id: str
    campaign: str
    item_id: int
    prompt: str
    completions: list[str]  # original order
    order: list[int]  # order[j] = index of the completion shown at position j
    served_at: datetime

    @property
    def shown(self) -> list[str]:
        """The completions in the order the page shows them."""
        return [self.completions[index] for index in self.order]


@dataclass(frozen=True)
class JudgementInfo:
    """A judgement with its item and rater, as export and agreement figures need it."""

    id: int
    item_id: int
    item_position: int
    prompt: str
    completions: list[str]
    model_scores: list[float] | None
    gold: dict[str, list[int]] | None
    rater_id: int
    rater: str
    view_id: str
    order: list[int]
    ranks: dict[str, list[int]]  # empty when skipped
    skipped: bool
    skip_reason: str | None
    flags: dict[str, list[str]]
    confidence: int | None  # None when skipped, or imported from a tool that asks for none
    comment: str
    time_spent_ms: int
    created_at: datetime


@dataclass(frozen=True)
class RaterProgress:
    rater_id: int
    name: str
    ranked: int
    skipped: int


@dataclass(frozen=True)
class Progress:
    items_total: int
    items_complete: int  # judged (skips included) by at least `overlap` raters
    ranked: int
    skipped: int
    per_rater: list[RaterProgress]  # every rater, by name


# --- the store ------------------------------------------------------------------------------


class Store:
    """The feedback database behind one SQLAlchemy URL; created or upgraded on opening."""

    def __init__(
        self,
        url: str,
        *,
        max_comment_chars: int = DEFAULT_MAX_COMMENT_CHARS,
        reservation_s: float = DEFAULT_RESERVATION_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``reservation_s``: how long a served page reserves its item (see the module's
        docstring). ``clock``: the current time, timezone-aware (a naive one is taken as UTC)."""
        if not reservation_s > 0:
            raise ValueError(f"reservation_s must be positive, got {reservation_s!r}")
        self.reservation = timedelta(seconds=reservation_s)
        self._clock = clock
        self.engine: Engine = connect(url)
        try:
            upgrade_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise
        self.max_comment_chars = max_comment_chars
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def _now(self) -> datetime:
        # In UTC whatever zone the clock reports in: SQLite keeps a timestamp's wall time without
        # its zone, so stored times and the times they are compared with must share one.
        return _as_utc(self._clock())

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        """One transaction, committed on leaving; a constraint the checks missed (two requests
        racing) becomes a Conflict, with nothing stored."""
        try:
            with self._sessions.begin() as session:
                yield session
        except IntegrityError as error:
            raise Conflict(f"refused by the database: {error.orig}") from None

    # --- campaigns and items ---

    def create_campaign(
        self,
        name: str,
        *,
        k: int,
        criteria: Sequence[str] = DEFAULT_CRITERIA,
        guidelines: str = "",
        overlap: int = 1,
    ) -> int:
        """A new campaign's id: an import with nothing to import yet."""
        return self.import_campaign(
            name, k=k, criteria=criteria, guidelines=guidelines, overlap=overlap, items=()
        )

    def add_items(self, campaign: str, items: Iterable[NewItem]) -> int:
        """Appends items (in order) to a campaign; returns how many. All or none are added."""
        with self._transaction() as session:
            return _add_items(session, _campaign_row(session, campaign), items)

    def import_campaign(
        self,
        name: str,
        *,
        k: int,
        criteria: Sequence[str] = DEFAULT_CRITERIA,
        guidelines: str = "",
        overlap: int = 1,
        items: Iterable[NewItem],
        judgements: Iterable[ExternalJudgement] = (),
    ) -> int:
        """A new campaign with its items and (see :meth:`import_judgements`) the judgements made
        of them in another tool, in one transaction: all of it is stored, or on any refusal
        nothing, no campaign included. Returns the campaign's id."""
        with self._transaction() as session:
            now = self._now()
            row = _new_campaign(session, name, k, criteria, guidelines, overlap, now)
            _add_items(session, row, items)
            _import_judgements(session, row, judgements, self.max_comment_chars, now)
            return row.id

    def campaign(self, name: str) -> CampaignInfo:
        with self._sessions() as session:
            return _campaign_info(_campaign_row(session, name))

    def campaigns(self) -> list[CampaignInfo]:
        """Every campaign, oldest first."""
        with self._sessions() as session:
            rows = session.scalars(select(Campaign).order_by(Campaign.id))
            return [_campaign_info(row) for row in rows]

    def items(self, campaign: str) -> list[ItemInfo]:
        """A campaign's items by position (admin side: model scores and gold included)."""
        with self._sessions() as session:
            row = _campaign_row(session, campaign)
            items = session.scalars(
                select(Item).where(Item.campaign_id == row.id).order_by(Item.position)
            )
            return [_item_info(item) for item in items]

    def set_model_scores(self, campaign: str, scores: Mapping[int, Sequence[float]]) -> None:
        """Replaces the model scores of items, by item id (one score per completion)."""
        if not all(_is_int(item_id) for item_id in scores):
            raise Invalid(f"model scores are keyed by item id (an integer), got {list(scores)}")
        with self._transaction() as session:
            row = _campaign_row(session, campaign)
            items = {
                item.id: item
                for item in session.scalars(select(Item).where(Item.id.in_(list(scores))))
                if item.campaign_id == row.id
            }
            for item_id, item_scores in scores.items():
                if item_id not in items:
                    raise NotFound(f"campaign {campaign!r} has no item {item_id}")
                checked = _checked_scores(item_scores, row.k, f"item {item_id}")
                items[item_id].model_scores = checked

    # --- raters ---

    def add_rater(self, name: str) -> str:
        """Adds a rater; returns their invitation token (only its hash is stored, so this is the
        one time it can be seen)."""
        _check_name(name, "rater name")
        token = secrets.token_urlsafe(24)
        with self._transaction() as session:
            if session.scalar(select(Rater.id).where(Rater.name == name)) is not None:
                raise Conflict(f"a rater named {name!r} exists already")
            session.add(Rater(name=name, token_sha256=_token_hash(token), created_at=self._now()))
        return token

    def rater_for_token(self, token: str) -> RaterInfo:
        """The rater whose invitation token this is; Forbidden for any other string."""
        if not isinstance(token, str):
            raise Forbidden("an invitation token is needed")
        digest = _token_hash(token)
        with self._sessions() as session:
            rater = session.scalar(select(Rater).where(Rater.token_sha256 == digest))
            # The lookup compares hashes, whose timing says nothing about the token; the final
            # comparison is constant-time all the same.
            if rater is None or not hmac.compare_digest(rater.token_sha256, digest):
                raise Forbidden("this invitation link is not a rater's (ask for a new one)")
            return RaterInfo(rater.id, rater.name, _as_utc(rater.created_at))

    # --- rating ---

    def next_view(
        self, campaign: str, rater_id: int, *, rng: random.Random | None = None
    ) -> ViewInfo | None:
        """The rater's next task page; None when nothing is left for them. ``rng`` seeds the
        shuffle of a new page (tests); default: system random.

        A rater holding an unexpired, unsubmitted page in the campaign gets that page back (same
        view id, same order: a reload shows the same task); its lease is not renewed. Otherwise a
        new View with a shuffled display order, of an item the rater has not judged whose
        judgements (skips count) plus the other raters' unexpired, unsubmitted pages number fewer
        than ``overlap``. Least-sure first: items with model scores by the smallest gap between
        any two of their scores, then items without scores; ties by position.
        """
        with self._transaction() as session:
            _lock_campaign(session, campaign)
            now = self._now()  # once the lock is held: a page waiting for it is served later
            leased_since = now - self.reservation
            row = _campaign_row(session, campaign)
            _rater_row(session, rater_id)
            held = _held_view(session, row, rater_id, leased_since)
            if held is not None:
                return _view_info(*held, row)
            candidates = _eligible_items(session, row, rater_id, leased_since)
            if not candidates:
                return None
            item = min(candidates, key=_least_sure_first)
            order = list(range(row.k))
            (rng or _SHUFFLE).shuffle(order)
            view = View(
                id=uuid.uuid4().hex,
                item_id=item.id,
                rater_id=rater_id,
                order=order,
                served_at=now,
            )
            session.add(view)
            return _view_info(view, item, row)

    def submit(self, view_id: str, rater_id: int, submission: Submission) -> int:
        """Stores a submitted page; returns the judgement's id. Committed before returning.

        A page whose reservation expired is stored all the same (unless the rater judged the item
        on another page), even when that takes the item past the campaign's overlap.

        NotFound: no such view. Forbidden: another rater's view. Conflict: the view was submitted
        already, or the rater judged this item on another page. Invalid: see the rules above.
        """
        with self._transaction() as session:
            view = session.get(View, view_id) if isinstance(view_id, str) else None
            if view is None:
                raise NotFound("no such task page (reload to get a new one)")
            if view.rater_id != rater_id:
                raise Forbidden("this task page was served to another rater")
            _check_not_judged(session, view)
            item = session.get_one(Item, view.item_id)
            row = session.get_one(Campaign, item.campaign_id)
            judgement = _judgement_row(submission, view, row, self.max_comment_chars, self._now())
            session.add(judgement)
            session.flush()
            return judgement.id

    def import_judgements(
        self,
        campaign: str,
        judgements: Iterable[ExternalJudgement],
    ) -> int:
        """Stores judgements made in another tool; returns how many. All or none are stored.

        Each names its item by position and its rater by name (a new name becomes a rater whose
        token nobody holds). Its one ranking needs a campaign that ranks by one criterion. The
        tool asked for no confidence (stored as None) and showed the completions in their
        original order (the view's order); an unknown time spent is stored as 0.
        """
        with self._transaction() as session:
            row = _campaign_row(session, campaign)
            return _import_judgements(session, row, judgements, self.max_comment_chars, self._now())

    # --- reading the results ---

    def judgements(self, campaign: str) -> list[JudgementInfo]:
        """A campaign's judgements, by item position then rater name."""
        with self._sessions() as session:
            row = _campaign_row(session, campaign)
            joined = session.execute(
                select(Judgement, Item, Rater, View)
                .join(Item, Judgement.item_id == Item.id)
                .join(Rater, Judgement.rater_id == Rater.id)
                .join(View, Judgement.view_id == View.id)
                .where(Item.campaign_id == row.id)
            ).all()
            infos = [_judgement_info(*columns) for columns in joined]
        # Sorted here, not in SQL: string collation differs between databases (and locales).
        return sorted(infos, key=lambda info: (info.item_position, info.rater, info.id))

    def progress(self, campaign: str) -> Progress:
        with self._sessions() as session:
            row = _campaign_row(session, campaign)
            judged = session.execute(
                select(Judgement.item_id, Judgement.rater_id, Judgement.skipped)
                .join(Item, Judgement.item_id == Item.id)
                .where(Item.campaign_id == row.id)
            ).all()
            items_total = session.scalar(select(func.count()).where(Item.campaign_id == row.id))
            raters = session.execute(select(Rater.id, Rater.name)).all()
        judgements_per_item = Counter(item_id for item_id, _, _ in judged)
        ranked = Counter(rater_id for _, rater_id, skipped in judged if not skipped)
        skipped = Counter(rater_id for _, rater_id, skipped in judged if skipped)
        return Progress(
            items_total=items_total or 0,
            items_complete=sum(1 for n in judgements_per_item.values() if n >= row.overlap),
            ranked=sum(ranked.values()),
            skipped=sum(skipped.values()),
            per_rater=sorted(
                (RaterProgress(id, name, ranked[id], skipped[id]) for id, name in raters),
                key=lambda rater: rater.name,
            ),
        )


# --- writes inside a transaction -----------------------------------------------------------


def _new_campaign(
    session: Session,
    name: str,
    k: int,
    criteria: Sequence[str],
    guidelines: str,
    overlap: int,
    now: datetime,
) -> Campaign:
    _check_name(name, "campaign name")
    _check_int(k, "k", MIN_K, MAX_K)
    _check_int(overlap, "overlap", 1, None)
    criteria = _checked_criteria(criteria)
    _check_text(guidelines, "guidelines")
    if session.scalar(select(Campaign.id).where(Campaign.name == name)) is not None:
        raise Conflict(f"a campaign named {name!r} exists already")
    campaign = Campaign(
        name=name,
        guidelines=guidelines,
        criteria=criteria,
        k=k,
        overlap=overlap,
        created_at=now,
    )
    session.add(campaign)
    session.flush()
    return campaign


def _add_items(session: Session, campaign: Campaign, items: Iterable[NewItem]) -> int:
    last = session.scalar(select(func.max(Item.position)).where(Item.campaign_id == campaign.id))
    position = -1 if last is None else last
    count = 0
    for count, new in enumerate(items, start=1):
        checked = checked_item(
            new, k=campaign.k, criteria=campaign.criteria, where=f"item {count} of this batch"
        )
        position += 1
        session.add(
            Item(
                campaign_id=campaign.id,
                position=position,
                prompt=checked.prompt,
                completions=list(checked.completions),
                source=checked.source,
                model_scores=checked.model_scores,
                gold=checked.gold,
            )
        )
    return count


def _import_judgements(
    session: Session,
    campaign: Campaign,
    judgements: Iterable[ExternalJudgement],
    max_comment_chars: int,
    now: datetime,
) -> int:
    judgements = list(judgements)
    if not judgements:
        return 0
    criterion = _only_criterion(campaign)
    positions = {
        item.position: item
        for item in session.scalars(select(Item).where(Item.campaign_id == campaign.id))
    }
    for number, external in enumerate(judgements, start=1):
        try:
            _import_judgement(
                session, campaign, positions, criterion, external, max_comment_chars, now
            )
        except FeedbackError as error:
            raise type(error)(
                f"imported judgement {number} (item {external.item_index}, rater "
                f"{external.rater!r}): {error.message}"
            ) from None
    return len(judgements)


def _import_judgement(
    session: Session,
    campaign: Campaign,
    positions: Mapping[int, Item],
    criterion: str,
    external: ExternalJudgement,
    max_comment_chars: int,
    now: datetime,
) -> None:
    item = positions.get(external.item_index)
    if item is None:
        raise NotFound(f"campaign {campaign.name!r} has no item {external.item_index}")
    rater = _rater_named(session, external.rater, now)
    view = View(
        id=uuid.uuid4().hex,
        item_id=item.id,
        rater_id=rater.id,
        order=list(range(campaign.k)),
        served_at=now,
    )
    _check_not_judged(session, view)
    session.add(view)
    session.flush()  # the judgement refers to it
    submission = Submission(
        ranks=None if external.ranks is None else {criterion: external.ranks},
        skipped=external.skipped,
        comment=external.comment,
        time_spent_ms=external.time_spent_ms or 0,
    )
    session.add(
        _judgement_row(submission, view, campaign, max_comment_chars, now, confidence_asked=False)
    )


# --- queries --------------------------------------------------------------------------------


def _campaign_row(session: Session, name: str) -> Campaign:
    row = session.scalar(select(Campaign).where(Campaign.name == name))
    if row is None:
        raise NotFound(f"no campaign named {name!r}")
    return row


def _rater_row(session: Session, rater_id: int) -> Rater:
    rater = session.get(Rater, rater_id)
    if rater is None:
        raise NotFound(f"no rater with id {rater_id}")
    return rater


def _lock_campaign(session: Session, name: str) -> None:
    """Serves one page of a campaign at a time, so that two raters asking at once see each
    other's reservation: a no-op write, the transaction's first statement, takes the campaign
    row's lock (PostgreSQL) or the database's write lock (SQLite) until the commit."""
    session.execute(
        update(Campaign)
        .where(Campaign.name == name)
        .values(overlap=Campaign.overlap)
        .execution_options(synchronize_session=False)
    )


def _open_page() -> Any:
    """A View whose rater has not judged its item, on this page or another."""
    return ~exists().where(Judgement.item_id == View.item_id, Judgement.rater_id == View.rater_id)


def _held_view(
    session: Session, campaign: Campaign, rater_id: int, leased_since: datetime
) -> tuple[View, Item] | None:
    """The rater's newest open page in the campaign that is still reserved, with its item."""
    held = session.execute(
        select(View, Item)
        .join(Item, View.item_id == Item.id)
        .where(
            Item.campaign_id == campaign.id,
            View.rater_id == rater_id,
            View.served_at > leased_since,
            _open_page(),
        )
        .order_by(View.served_at.desc(), View.id)
        .limit(1)
    ).first()
    return None if held is None else (held[0], held[1])


def _eligible_items(
    session: Session, campaign: Campaign, rater_id: int, leased_since: datetime
) -> list[Item]:
    """Items the rater has not judged whose judgements plus other raters' reservations (open
    pages served after ``leased_since``) number fewer than the overlap."""
    judged_by_rater = select(Judgement.item_id).where(Judgement.rater_id == rater_id)
    judgement_count = select(func.count()).where(Judgement.item_id == Item.id).scalar_subquery()
    reserved_by_others = (
        select(func.count(distinct(View.rater_id)))
        .where(
            View.item_id == Item.id,
            View.rater_id != rater_id,
            View.served_at > leased_since,
            _open_page(),
        )
        .scalar_subquery()
    )
    return list(
        session.scalars(
            select(Item).where(
                Item.campaign_id == campaign.id,
                Item.id.not_in(judged_by_rater),
                judgement_count + reserved_by_others < campaign.overlap,
            )
        )
    )


def _least_sure_first(item: Item) -> tuple[int, float, int]:
    if item.model_scores is None:
        return (1, 0.0, item.position)
    return (0, smallest_gap(item.model_scores), item.position)


def smallest_gap(scores: Sequence[float]) -> float:
    """The smallest difference between any two scores: how close the model is to a tie."""
    ordered = sorted(scores)
    return min(higher - lower for lower, higher in zip(ordered, ordered[1:], strict=False))


def _check_not_judged(session: Session, view: View) -> None:
    if session.scalar(select(Judgement.id).where(Judgement.view_id == view.id)) is not None:
        raise Conflict("this task page was submitted already")
    judged = select(Judgement.id).where(
        Judgement.item_id == view.item_id, Judgement.rater_id == view.rater_id
    )
    if session.scalar(judged) is not None:
        raise Conflict("you have judged this item already (on another page)")


def _rater_named(session: Session, name: str, now: datetime) -> Rater:
    """The rater of that name, created (with a token nobody holds) if new."""
    rater = session.scalar(select(Rater).where(Rater.name == name))
    if rater is None:
        _check_name(name, "rater name")
        unused_token = secrets.token_urlsafe(24)
        rater = Rater(name=name, token_sha256=_token_hash(unused_token), created_at=now)
        session.add(rater)
        session.flush()
    return rater


def _only_criterion(campaign: Campaign) -> str:
    if len(campaign.criteria) != 1:
        raise Invalid(
            f"an imported judgement is one ranking, but campaign {campaign.name!r} ranks by "
            f"{len(campaign.criteria)} criteria ({', '.join(campaign.criteria)}); import into a "
            "campaign with one criterion (e.g. 'overall')"
        )
    return campaign.criteria[0]


# --- validation -----------------------------------------------------------------------------


def competition_ranks(ranks: Sequence[int], k: int, where: str) -> list[int]:
    """``ranks`` checked as a ranking of ``k`` completions, in standard competition form.

    Accepted: competition ranks (rank r given to c completions => the next rank is r + c, as in
    [1, 1, 3]) and dense tie ranks ([1, 1, 2], returned as [1, 1, 3]).
    """
    if not isinstance(ranks, list | tuple) or not all(_is_int(rank) for rank in ranks):
        raise Invalid(f"{where}: ranks must be a list of integers (1 = best), got {ranks!r}")
    if len(ranks) != k:
        raise Invalid(f"{where}: {k} completions but {len(ranks)} ranks")
    if any(not 1 <= rank <= k for rank in ranks):
        raise Invalid(f"{where}: ranks must be between 1 and {k}, got {list(ranks)}")
    # Each completion's rank is 1 + how many completions are strictly better.
    competition = [1 + sum(other < rank for other in ranks) for rank in ranks]
    dense = sorted(set(ranks)) == list(range(1, len(set(ranks)) + 1))
    if list(ranks) != competition and not dense:
        raise Invalid(
            f"{where}: {list(ranks)} is not a ranking: a rank shared by c completions is "
            f"followed by that rank + c (e.g. [1, 1, 3]); did you mean {competition}?"
        )
    return competition


def _judgement_row(
    submission: Submission,
    view: View,
    campaign: Campaign,
    max_comment_chars: int,
    now: datetime,
    *,
    confidence_asked: bool = True,
) -> Judgement:
    """The row to store, every rule checked (Invalid); ``confidence_asked`` False for an import
    from a tool that has no confidence."""
    skipped = submission.skipped
    if not isinstance(skipped, bool):
        raise Invalid(f"skipped must be true or false, got {skipped!r}")
    ranks = {} if skipped else _checked_ranks(submission.ranks, campaign)
    confidence = None if skipped or not confidence_asked else submission.confidence
    if not skipped and confidence_asked:
        _check_int(confidence, "confidence", MIN_CONFIDENCE, MAX_CONFIDENCE)
    skip_reason = submission.skip_reason if skipped else None
    if skip_reason is not None:
        _check_text(skip_reason, "skip reason", max_chars=max_comment_chars)
    comment = "" if submission.comment is None else submission.comment
    _check_text(comment, "comment", max_chars=max_comment_chars)
    _check_int(submission.time_spent_ms, "time_spent_ms", 0, None)
    return Judgement(
        item_id=view.item_id,
        rater_id=view.rater_id,
        view_id=view.id,
        ranks=ranks,
        skipped=skipped,
        skip_reason=skip_reason,
        flags=_checked_flags(submission.flags, campaign.k),
        confidence=confidence,
        comment=comment,
        time_spent_ms=submission.time_spent_ms,
        created_at=now,
    )


def _checked_ranks(ranks: Mapping[str, Sequence[int]] | None, campaign: Campaign) -> dict:
    if not isinstance(ranks, Mapping):
        raise Invalid(f"a ranking for each of {', '.join(campaign.criteria)} is needed")
    missing = [criterion for criterion in campaign.criteria if criterion not in ranks]
    unknown = sorted(str(criterion) for criterion in ranks if criterion not in campaign.criteria)
    if missing or unknown:
        raise Invalid(
            f"ranks are needed for exactly the campaign's criteria {campaign.criteria}; "
            f"missing {missing}, unknown {unknown}"
        )
    return {
        criterion: competition_ranks(ranks[criterion], campaign.k, f"ranks for {criterion!r}")
        for criterion in campaign.criteria
    }


def _checked_flags(flags: Mapping[Any, Sequence[str]] | None, k: int) -> dict[str, list[str]]:
    """Flags by completion index (the key as a string, as JSON has it), each list in FLAGS
    order without repeats; empty lists left out."""
    if flags is None:
        return {}
    if not isinstance(flags, Mapping):
        raise Invalid(f"flags must map a completion index to a list of flags, got {flags!r}")
    checked: dict[int, list[str]] = {}
    for key, names in flags.items():
        index = _completion_index(key, k)
        if not isinstance(names, list | tuple) or any(name not in FLAGS for name in names):
            raise Invalid(f"flags of completion {index} must be among {list(FLAGS)}, got {names!r}")
        if names:
            checked[index] = [name for name in FLAGS if name in names]
    return {str(index): checked[index] for index in sorted(checked)}


def _completion_index(key: Any, k: int) -> int:
    text = str(key) if _is_int(key) else key
    if not isinstance(text, str) or not text.isdigit() or not int(text) < k:
        raise Invalid(f"a flag names completion {key!r}; completions are numbered 0 to {k - 1}")
    return int(text)


def checked_item(new: NewItem, *, k: int, criteria: Sequence[str], where: str) -> NewItem:
    """``new`` checked as an item of a campaign of ``k`` completions ranked by ``criteria``
    (Invalid, naming ``where``), its scores as floats and its gold in competition form. The
    store checks every item it adds; a caller reading a file checks first to name the line."""
    _check_text(new.prompt, f"{where}: prompt")
    completions = new.completions
    if not isinstance(completions, list | tuple) or len(completions) != k:
        raise Invalid(
            f"{where}: the campaign ranks {k} completions per prompt, got {completions!r:.200}"
        )
    for index, completion in enumerate(completions):
        _check_text(completion, f"{where}: completion {index}")
    if new.source is not None and not isinstance(new.source, dict):
        raise Invalid(f"{where}: source must be a JSON object, got {new.source!r}")
    return NewItem(
        prompt=new.prompt,
        completions=list(completions),
        source=new.source,
        model_scores=_checked_scores(new.model_scores, k, where),
        gold=_checked_gold(new.gold, criteria, k, where),
    )


def _checked_scores(scores: Sequence[float] | None, k: int, where: str) -> list[float] | None:
    if scores is None:
        return None
    if (
        not isinstance(scores, list | tuple)
        or len(scores) != k
        or not all(_is_number(score) and math.isfinite(score) for score in scores)
    ):
        raise Invalid(f"{where}: model scores must be {k} finite numbers, got {scores!r}")
    return [float(score) for score in scores]


def _checked_gold(
    gold: Mapping[str, Sequence[int]] | None, criteria: Sequence[str], k: int, where: str
) -> dict[str, list[int]] | None:
    """A gold item's known ranks, checked like a submission's, for some or all criteria."""
    if gold is None:
        return None
    if not isinstance(gold, Mapping) or not gold:
        raise Invalid(f"{where}: gold must map criteria to ranks, got {gold!r}")
    unknown = sorted(str(criterion) for criterion in gold if criterion not in criteria)
    if unknown:
        raise Invalid(
            f"{where}: gold names criteria {unknown} the campaign does not rank by "
            f"({', '.join(criteria)})"
        )
    return {
        criterion: competition_ranks(gold[criterion], k, f"{where}: gold {criterion!r}")
        for criterion in criteria
        if criterion in gold
    }


def _checked_criteria(criteria: Sequence[str]) -> list[str]:
    if isinstance(criteria, str) or not isinstance(criteria, Sequence) or not criteria:
        raise Invalid(f"criteria must be a non-empty list of names, got {criteria!r}")
    for criterion in criteria:
        _check_name(criterion, "criterion")
    if len(set(criteria)) != len(criteria):
        raise Invalid(f"criteria must differ from each other, got {list(criteria)}")
    return list(criteria)


def _check_name(name: str, what: str) -> None:
    _check_text(name, what, max_chars=NAME_CHARS)
    if not name.strip():
        raise Invalid(f"the {what} must not be empty")


def _check_text(text: str, what: str, *, max_chars: int | None = None) -> None:
    if not isinstance(text, str):
        raise Invalid(f"the {what} must be text, got {type(text).__name__}")
    if max_chars is not None and len(text) > max_chars:
        raise Invalid(f"the {what} has {len(text)} characters; at most {max_chars} are allowed")
    # PostgreSQL cannot store NUL in text; refusing it everywhere keeps both databases alike.
    if "\x00" in text:
        raise Invalid(f"the {what} contains a NUL character")


def _check_int(value: Any, what: str, low: int, high: int | None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise Invalid(f"{what} must be an integer {bounds}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- rows to infos --------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC. SQLite hands timestamps back without their zone; every stored one is
    UTC (PostgreSQL hands them back in the session's zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _campaign_info(row: Campaign) -> CampaignInfo:
    return CampaignInfo(
        id=row.id,
        name=row.name,
        guidelines=row.guidelines,
        criteria=list(row.criteria),
        k=row.k,
        overlap=row.overlap,
        created_at=_as_utc(row.created_at),
    )


def _view_info(view: View, item: Item, campaign: Campaign) -> ViewInfo:
    return ViewInfo(
        view_id=view.id,
        campaign=campaign.name,
        item_id=item.id,
        prompt=item.prompt,
        completions=list(item.completions),
        order=list(view.order),
        served_at=_as_utc(view.served_at),
    )


def _item_info(item: Item) -> ItemInfo:
    return ItemInfo(
        id=item.id,
        position=item.position,
        prompt=item.prompt,
        completions=list(item.completions),
        source=item.source,
        model_scores=item.model_scores,
        gold=item.gold,
    )


def _judgement_info(judgement: Judgement, item: Item, rater: Rater, view: View) -> JudgementInfo:
    return JudgementInfo(
        id=judgement.id,
        item_id=item.id,
        item_position=item.position,
        prompt=item.prompt,
        completions=list(item.completions),
        model_scores=item.model_scores,
        gold=item.gold,
        rater_id=rater.id,
        rater=rater.name,
        view_id=view.id,
        order=list(view.order),
        ranks=dict(judgement.ranks),
        skipped=judgement.skipped,
        skip_reason=judgement.skip_reason,
        flags=dict(judgement.flags),
        confidence=judgement.confidence,
        comment=judgement.comment,
        time_spent_ms=judgement.time_spent_ms,
        created_at=_as_utc(judgement.created_at),
    )
