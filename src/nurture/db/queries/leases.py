"""Leader election among scheduler processes: a named lease row that one holder renews."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.tables import dialect_insert, scheduler_leases


async def try_acquire_lease(
    conn: AsyncConnection, *, name: str, holder: str, now: datetime, ttl: timedelta
) -> bool:
    """Take or renew lease `name` for `holder` unless another holder's lease is still running."""
    stmt = dialect_insert(conn, scheduler_leases).values(name=name, holder=holder, expires_at=now + ttl)
    stmt = stmt.on_conflict_do_update(
        index_elements=[scheduler_leases.c.name],
        set_={"holder": stmt.excluded.holder, "expires_at": stmt.excluded.expires_at},
        where=(scheduler_leases.c.holder == holder) | (scheduler_leases.c.expires_at <= now),
    ).returning(scheduler_leases.c.holder)
    return (await conn.execute(stmt)).scalar_one_or_none() == holder


async def release_lease(conn: AsyncConnection, *, name: str, holder: str) -> None:
    await conn.execute(
        scheduler_leases.delete().where(scheduler_leases.c.name == name, scheduler_leases.c.holder == holder)
    )
