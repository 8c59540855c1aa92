"""The feedback database: its tables, how to connect, and how to bring a database up to date.

One SQLAlchemy URL names the database: ``sqlite:///feedback.db`` (the default, a file) or
``postgresql+psycopg://user@host/db`` for a team. The schema is owned by the Alembic migrations
in ``migrations/versions/``; these models mirror it (a test holds the two in agreement).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS_FOLDER = Path(__file__).resolve().parent / "migrations"

# Constraint names follow one pattern, so the migrations can name them and a later migration can
# drop or alter them on every database (SQLite needs a name to find a constraint at all).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_CHARS = 200  # campaign and rater names
TIMESTAMP = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Campaign(Base):
    """A set of items (prompt x K completions) to rank, with the guidelines and criteria."""

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint("k BETWEEN 2 AND 9", name="k_range"),
        CheckConstraint("overlap >= 1", name="overlap_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), unique=True)
    guidelines: Mapped[str] = mapped_column(Text)
    criteria: Mapped[list[str]] = mapped_column(JSON)
    k: Mapped[int]
    overlap: Mapped[int]  # how many raters judge each item
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP)


class Item(Base):
    """One prompt and its K completions; ``source``, ``model_scores`` and ``gold`` are never
    shown to raters."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("campaign_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"))
    position: Mapped[int]  # insertion order within the campaign, from 0
    prompt: Mapped[str] = mapped_column(Text)
    completions: Mapped[list[str]] = mapped_column(JSON)
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # policy folder, step, sampling
    model_scores: Mapped[list[float] | None] = mapped_column(JSON)
    gold: Mapped[dict[str, list[int]] | None] = mapped_column(JSON)  # criterion -> known ranks


class Rater(Base):
    """A person who ranks; only a display name and the hash of their invitation token."""

    __tablename__ = "raters"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_CHARS), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP)


class View(Base):
    """One serving of an item's task page to a rater, with the shuffled order it showed; until
    it is submitted, and for the store's reservation time after ``served_at``, it reserves its
    item for that rater."""

    __tablename__ = "views"
    # Serving a page looks up the open pages of each item and those of the rater, served lately.
    __table_args__ = (
        Index("ix_views_item_id_served_at", "item_id", "served_at"),
        Index("ix_views_rater_id_served_at", "rater_id", "served_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # uuid4 hex: the page nonce
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"))
    # order[j] is the index of the completion shown at position j (kept to study position bias)
    order: Mapped[list[int]] = mapped_column(JSON)
    served_at: Mapped[datetime] = mapped_column(TIMESTAMP)


class Judgement(Base):
    """A rater's submitted task page: ranks per criterion in original order, or a skip."""

    __tablename__ = "judgements"
    __table_args__ = (
        UniqueConstraint("item_id", "rater_id"),
        CheckConstraint(
            "confidence IS NULL OR confidence BETWEEN 1 AND 4", name="confidence_range"
        ),
        CheckConstraint("time_spent_ms >= 0", name="time_spent_ms_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id"))
    view_id: Mapped[str] = mapped_column(ForeignKey("views.id"), unique=True)
    ranks: Mapped[dict[str, list[int]]] = mapped_column(JSON)  # criterion -> competition ranks
    skipped: Mapped[bool]
    skip_reason: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[dict[str, list[str]]] = mapped_column(JSON)  # completion index -> flags
    confidence: Mapped[int | None]  # 1..4; None when skipped or imported from a tool without one
    comment: Mapped[str] = mapped_column(Text)
    time_spent_ms: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(TIMESTAMP)


def connect(url: str) -> Engine:
    """An engine for ``url``; a SQLite file (and its folder) is created on first use."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    event.listen(engine, "connect", _configure_sqlite)
    return engine


def _configure_sqlite(dbapi_connection: Any, _connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: raters read while one of them writes. synchronous=FULL: a commit is on disk before it
    # returns, so a ranking the page called saved survives a killed server or a power cut.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    # SQLite ignores foreign keys unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def upgrade(url: str | Engine) -> None:
    """Brings the database at ``url`` (or behind an engine) to the newest schema; creates it on
    first run. Alembic runs from code: no alembic.ini is needed."""
    engine = connect(url) if isinstance(url, str) else url
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as connection:
            # env.py migrates through this connection, so the SQLite pragmas above apply.
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        if isinstance(url, str):
            engine.dispose()


def alembic_config(url: str) -> Config:
    """The Alembic configuration of the feedback migrations, for ``url``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_FOLDER))
    # The ini-style options interpolate "%"; a URL escapes characters of a password with it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config
