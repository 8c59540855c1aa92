"""Indexes for view reservations: a served page reserves its item for a while, so serving the next
page looks up each item's and each rater's recently served views.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_views_item_id_served_at": ["item_id", "served_at"],
    "ix_views_rater_id_served_at": ["rater_id", "served_at"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "views", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="views")
