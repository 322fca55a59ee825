"""stage history: every move of a lead's stage, with its path, reason and an optional idempotency key

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stage_changes",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("lead_id", BIG_ID, sa.ForeignKey("leads.id", ondelete="CASCADE"), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=False),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("path", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_stage_changes_idempotency_key"),
    )
    op.create_index("ix_stage_changes_lead_time", "stage_changes", ["lead_id", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_stage_changes_lead_time", table_name="stage_changes")
    op.drop_table("stage_changes")
