"""The initial feedback schema: campaigns, items, raters, views, judgements.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A migration is a frozen snapshot: it spells its types and constraint names out instead of
# importing the models, which move on with later migrations.
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("guidelines", sa.Text(), nullable=False),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
        sa.UniqueConstraint("name", name="uq_campaigns_name"),
        sa.CheckConstraint("k BETWEEN 2 AND 9", name="ck_campaigns_k_range"),
        sa.CheckConstraint("overlap >= 1", name="ck_campaigns_overlap_positive"),
    )
    op.create_table(
        "raters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_raters"),
        sa.UniqueConstraint("name", name="uq_raters_name"),
        sa.UniqueConstraint("token_sha256", name="uq_raters_token_sha256"),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("completions", sa.JSON(), nullable=False),
        sa.Column("source", sa.JSON(), nullable=True),
        sa.Column("model_scores", sa.JSON(), nullable=True),
        sa.Column("gold", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name="fk_items_campaign_id_campaigns"
        ),
        sa.UniqueConstraint("campaign_id", "position", name="uq_items_campaign_id_position"),
    )
    op.create_table(
        "views",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("order", sa.JSON(), nullable=False),
        sa.Column("served_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_views"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_views_item_id_items"),
        sa.ForeignKeyConstraint(["rater_id"], ["raters.id"], name="fk_views_rater_id_raters"),
    )
    op.create_table(
        "judgements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("view_id", sa.String(32), nullable=False),
        sa.Column("ranks", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("skip_reason", sa.Text(), nullable=True),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("confidence", sa.Integer(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("time_spent_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_judgements"),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_judgements_item_id_items"),
        sa.ForeignKeyConstraint(["rater_id"], ["raters.id"], name="fk_judgements_rater_id_raters"),
        sa.ForeignKeyConstraint(["view_id"], ["views.id"], name="fk_judgements_view_id_views"),
        sa.UniqueConstraint("view_id", name="uq_judgements_view_id"),
        sa.UniqueConstraint("item_id", "rater_id", name="uq_judgements_item_id_rater_id"),
        sa.CheckConstraint(
            "confidence IS NULL OR confidence BETWEEN 1 AND 4",
            name="ck_judgements_confidence_range",
        ),
        sa.CheckConstraint("time_spent_ms >= 0", name="ck_judgements_time_spent_ms_positive"),
    )


def downgrade() -> None:
    for table in ("judgements", "views", "items", "raters", "campaigns"):
        op.drop_table(table)
