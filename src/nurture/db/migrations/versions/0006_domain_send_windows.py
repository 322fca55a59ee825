"""schedule path: per-domain claim counts for rate limits

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "domain_send_windows",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_table("domain_send_windows")
