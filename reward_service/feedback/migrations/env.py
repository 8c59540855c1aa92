"""Alembic's entry point for the feedback migrations; run through ``db.upgrade`` (no alembic.ini).

``db.upgrade`` hands over its open connection in ``config.attributes["connection"]``; without one
(the ``alembic`` command line, given a config naming ``sqlalchemy.url``) this connects itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from reward_service.feedback.db import Base, connect


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most of a table; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    engine = connect(context.config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as own_connection:
            run_migrations(own_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("the feedback migrations run against a database, not as SQL scripts")
run_migrations_online()
