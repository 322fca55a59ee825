"""Schema migrations (Alembic), run in-process on the service's own engine: `nurture db upgrade`."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from nurture.db.engine import Database

SCRIPT_LOCATION = "nurture.db:migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.attributes["connection"] = connection
    return config


async def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent)."""
    async with db.transaction() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    async with db.transaction() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
