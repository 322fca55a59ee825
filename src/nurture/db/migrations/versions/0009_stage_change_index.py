"""reports: an index of the stage changes, so the funnel reads only them and not the whole timeline

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_touchpoints_stage_changes",
        "touchpoints",
        ["lead_id", "occurred_at"],
        postgresql_where=sa.text("kind = 'stage_change'"),
        sqlite_where=sa.text("kind = 'stage_change'"),
    )


def downgrade() -> None:
    op.drop_index("ix_touchpoints_stage_changes", table_name="touchpoints")
