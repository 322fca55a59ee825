"""enrollment at volume: drop the redundant foreign key deliveries.lead_id -> leads

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24

Every delivery belongs to an enrollment (`deliveries.enrollment_id`, ON DELETE CASCADE) and every enrollment
to a lead, so deleting a lead still deletes its deliveries; the second check per planned delivery made
enrolling about a third slower. The column and its index stay.

SQLite cannot drop a constraint, and copying the table (Alembic's batch mode) would drop the old one, which
with foreign keys on sets `touchpoints.delivery_id` and `events.delivery_id` to NULL. So the constraint is
cut from the stored table definition instead, the procedure SQLite documents for removing a FOREIGN KEY
constraint (https://www.sqlite.org/lang_altertable.html, "making other kinds of table schema changes").
"""

import re
from collections.abc import Sequence

from alembic import op
from sqlalchemy import Connection, text

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSTGRES_NAME = "deliveries_lead_id_fkey"  # PostgreSQL's name for the unnamed constraint of 0001
LEAD_CLAUSE = "FOREIGN KEY(lead_id) REFERENCES leads (id) ON DELETE CASCADE"
_LEAD_CLAUSE_RE = re.compile(
    r',\s*FOREIGN\s+KEY\s*\(\s*"?lead_id"?\s*\)\s*REFERENCES\s+"?leads"?\s*\(\s*"?id"?\s*\)'
    r"(?:\s+ON\s+DELETE\s+CASCADE)?",
    re.IGNORECASE,
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(POSTGRES_NAME, "deliveries", type_="foreignkey")
        return
    definition = _table_sql(bind)
    found = _LEAD_CLAUSE_RE.findall(definition)
    if len(found) != 1:
        raise RuntimeError(f"deliveries: expected one foreign key on lead_id, found {len(found)}")
    _rewrite_table_sql(bind, _LEAD_CLAUSE_RE.sub("", definition, count=1))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.create_foreign_key(POSTGRES_NAME, "deliveries", "leads", ["lead_id"], ["id"], ondelete="CASCADE")
        return
    definition = _table_sql(bind).rstrip()
    if not definition.endswith(")"):
        raise RuntimeError("deliveries: unexpected table definition")
    _rewrite_table_sql(bind, f"{definition[:-1].rstrip()}, \n\t{LEAD_CLAUSE}\n)")
    orphans = bind.execute(text("PRAGMA foreign_key_check(deliveries)")).fetchall()
    if orphans:
        raise RuntimeError(f"deliveries: {len(orphans)} rows point at no lead; the foreign key cannot return")


def _table_sql(bind: Connection) -> str:
    return str(
        bind.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'")
        ).scalar_one()
    )


def _rewrite_table_sql(bind: Connection, definition: str) -> None:
    version = int(bind.execute(text("PRAGMA schema_version")).scalar_one())
    bind.execute(text("PRAGMA writable_schema = ON"))
    try:
        bind.execute(
            text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = 'deliveries'"),
            {"sql": definition},
        )
        bind.execute(text(f"PRAGMA schema_version = {version + 1}"))  # other connections re-read the schema
    finally:
        bind.execute(text("PRAGMA writable_schema = OFF"))
