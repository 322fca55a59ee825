"""suppression hashes, per-domain send state, recipient domain and variant on deliveries, idempotency body hash

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("recipient_domain", sa.String(255), server_default="", nullable=False))
        batch.add_column(sa.Column("variant", sa.String(64), nullable=True))
    op.execute(
        "UPDATE deliveries SET recipient_domain = "
        "(SELECT lower(substr(email, instr(email, '@') + 1)) FROM leads WHERE leads.id = deliveries.lead_id)"
        if op.get_context().dialect.name == "sqlite"
        else "UPDATE deliveries d SET recipient_domain = lower(split_part(l.email, '@', 2)) "
        "FROM leads l WHERE l.id = d.lead_id"
    )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("idempotency_hash", sa.String(64), nullable=True))
    op.create_table(
        "suppressions",
        sa.Column("email_hash", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "send_domains",
        sa.Column("domain", sa.String(255), primary_key=True),
        sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("send_domains")
    op.drop_table("suppressions")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("idempotency_hash")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("variant")
        batch.drop_column("recipient_domain")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("erased_at")
