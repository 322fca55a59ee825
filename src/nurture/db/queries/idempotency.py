"""The request hashes kept beside idempotency keys: a key reused with another body is a conflict."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db.queries.tables import events


async def remember_request_hash(conn: AsyncConnection, idempotency_key: str, request_hash: str) -> None:
    """Record the hash of the request that first used `idempotency_key` (a later one never replaces it)."""
    await conn.execute(
        update(events)
        .where(events.c.idempotency_key == idempotency_key, events.c.idempotency_hash.is_(None))
        .values(idempotency_hash=request_hash)
    )


async def fetch_request_hash(conn: AsyncConnection, idempotency_key: str) -> str | None:
    """The hash recorded for `idempotency_key`; None when unknown or recorded without one."""
    stmt = select(events.c.idempotency_hash).where(events.c.idempotency_key == idempotency_key)
    value: str | None = (await conn.execute(stmt)).scalar_one_or_none()
    return value
