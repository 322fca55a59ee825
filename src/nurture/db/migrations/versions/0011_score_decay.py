"""leads: the unrounded score and when it was computed, and when the stored score next falls by decay

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("score_points", sa.Float(), nullable=True))
        batch.add_column(sa.Column("score_points_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("score_drops_at", sa.DateTime(timezone=True), nullable=True))
    # A stored score of a lead scored before this revision decays from its last rescore; its first refresh
    # is due at once and sets its next instant.
    op.execute(
        "UPDATE leads SET score_points = score, score_points_at = score_updated_at, "
        "score_drops_at = score_updated_at WHERE score > 0 AND score_updated_at IS NOT NULL"
    )
    op.create_index(
        "ix_leads_score_drops_at",
        "leads",
        ["score_drops_at"],
        postgresql_where=sa.text("score_drops_at IS NOT NULL"),
        sqlite_where=sa.text("score_drops_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_leads_score_drops_at", table_name="leads")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("score_drops_at")
        batch.drop_column("score_points_at")
        batch.drop_column("score_points")
