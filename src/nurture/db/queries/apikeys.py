"""Queries on API keys: only a key's prefix (to find it) and its SHA-256 (to check it) are ever stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db import models


def _api_keys_table() -> Table:
    table = models.ApiKey.__table__
    assert isinstance(table, Table)
    return table


api_keys = _api_keys_table()  # not in `tables`: only this module reads or writes keys


@dataclass(frozen=True, slots=True)
class StoredApiKey:
    id: int
    name: str
    prefix: str
    key_hash: str  # SHA-256 of the whole key, hex
    created_at: datetime
    revoked_at: datetime | None


async def insert_api_key(
    conn: AsyncConnection, *, name: str, prefix: str, key_hash: str, now: datetime
) -> int:
    stmt = (
        api_keys.insert()
        .values(name=name, prefix=prefix, key_hash=key_hash, created_at=now, revoked_at=None)
        .returning(api_keys.c.id)
    )
    key_id: int = (await conn.execute(stmt)).scalar_one()
    return key_id


async def fetch_active_api_key(conn: AsyncConnection, prefix: str) -> StoredApiKey | None:
    """The unrevoked key with `prefix`, or None."""
    stmt = select(api_keys).where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
    row = (await conn.execute(stmt)).first()
    return None if row is None else StoredApiKey(**row._mapping)


async def fetch_api_keys(conn: AsyncConnection) -> list[StoredApiKey]:
    """Every key, revoked ones included, oldest first."""
    rows = await conn.execute(select(api_keys).order_by(api_keys.c.id))
    return [StoredApiKey(**row._mapping) for row in rows]


async def revoke_api_key(conn: AsyncConnection, prefix: str, *, now: datetime) -> bool:
    """Revoke the key with `prefix`; False when there is no such key or it was revoked already."""
    stmt = (
        update(api_keys)
        .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(api_keys.c.id)
    )
    return (await conn.execute(stmt)).first() is not None
