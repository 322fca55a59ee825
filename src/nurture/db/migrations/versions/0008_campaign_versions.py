"""campaign language: campaign version snapshots, and room for rep task triggers (`task:<step id>`)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "campaign_versions",
        sa.Column("campaign_id", sa.String(100), primary_key=True),
        sa.Column("content_hash", sa.String(64), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("alerts") as batch:  # "task:" and a step slug of up to 64 characters
        batch.alter_column(
            "trigger", type_=sa.String(80), existing_type=sa.String(40), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column(
            "trigger", type_=sa.String(40), existing_type=sa.String(80), existing_nullable=False
        )
    op.drop_table("campaign_versions")
