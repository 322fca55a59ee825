"""The migrated schema matches the models, and the scheduler lease elects one leader (both databases)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from nurture.db.engine import Database
from nurture.db.models import Base
from nurture.db.queries.leases import release_lease, try_acquire_lease

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
TTL = timedelta(seconds=30)


async def test_the_migrations_create_exactly_the_schema_the_models_describe(db: Database) -> None:
    async with db.transaction() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
            )
        )
    assert diff == []


async def _acquire(db: Database, holder: str, now: datetime) -> bool:
    async with db.transaction() as conn:
        return await try_acquire_lease(conn, name="scheduler", holder=holder, now=now, ttl=TTL)


async def test_only_one_scheduler_holds_the_lease_until_it_lapses(db: Database) -> None:
    assert await _acquire(db, "a", NOW)
    assert not await _acquire(db, "b", NOW + timedelta(seconds=1))
    # The holder renews its own lease and keeps it.
    assert await _acquire(db, "a", NOW + timedelta(seconds=20))
    assert not await _acquire(db, "b", NOW + timedelta(seconds=40))
    # The leader stops renewing (killed): another takes over once the lease has lapsed.
    assert await _acquire(db, "b", NOW + timedelta(seconds=51))
    assert not await _acquire(db, "a", NOW + timedelta(seconds=52))


async def test_a_released_lease_is_taken_at_once_by_another_scheduler(db: Database) -> None:
    assert await _acquire(db, "a", NOW)
    async with db.transaction() as conn:
        await release_lease(conn, name="scheduler", holder="a")
    assert await _acquire(db, "b", NOW + timedelta(seconds=1))
