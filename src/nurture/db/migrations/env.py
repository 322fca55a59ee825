"""Alembic environment: runs on the connection that `nurture.db.migrate` hands over."""

from __future__ import annotations

from alembic import context

from nurture.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
context.run_migrations()
