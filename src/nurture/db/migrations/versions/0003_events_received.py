"""events: index on received_at, to find recent events whose re-score was lost

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_events_received", "events", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_events_received", table_name="events")
