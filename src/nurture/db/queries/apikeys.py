"""Queries on API keys: only a key's prefix (to find it) and its SHA-256 (to check it) are ever stored.

The login links made for a key (`nurture login-link`) work once: a used link's nonce is kept in
`catalog_state` (the small key/value table) until the link would have expired anyway. A session a rep signed
out of is kept there the same way, by its id, until it would have expired: every web process reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nurture.db import models
from nurture.db.queries.tables import catalog_state, dialect_insert

_USED_LINK: Final = "login_link:"  # + nonce: the catalog_state key of a login link that was used
_ENDED_SESSION: Final = "session_ended:"  # + session id: the catalog_state key of a session signed out of


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


async def fetch_active_api_keys_starting(
    conn: AsyncConnection, start: str, *, limit: int
) -> list[StoredApiKey]:
    """Up to `limit` unrevoked keys whose prefix starts with `start`, oldest first."""
    stmt = (
        select(api_keys)
        .where(api_keys.c.prefix.startswith(start, autoescape=True), api_keys.c.revoked_at.is_(None))
        .order_by(api_keys.c.id)
        .limit(limit)
    )
    return [StoredApiKey(**row._mapping) for row in await conn.execute(stmt)]


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


async def fetch_active_api_key_by_id(conn: AsyncConnection, key_id: int) -> StoredApiKey | None:
    """The unrevoked key with this id (what a session names), or None."""
    stmt = select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
    row = (await conn.execute(stmt)).first()
    return None if row is None else StoredApiKey(**row._mapping)


async def claim_login_link(conn: AsyncConnection, nonce: str, *, expires_at: datetime, now: datetime) -> bool:
    """Mark the login link with `nonce` used; False when it was used before.

    Links that have expired by `now` are forgotten on the way: their tokens are refused before this runs.
    """
    return await _claim_until(conn, _USED_LINK, nonce, expires_at=expires_at, now=now)


async def end_session(conn: AsyncConnection, session_id: str, *, expires_at: datetime, now: datetime) -> None:
    """Record the session `session_id` (which would expire at `expires_at`) as ended; ended before is fine.

    Sessions that have expired by `now` are forgotten on the way: their cookies are refused before
    `fetch_session_key` asks.
    """
    await _claim_until(conn, _ENDED_SESSION, session_id, expires_at=expires_at, now=now)


async def fetch_session_key(conn: AsyncConnection, key_id: int, session_id: str) -> StoredApiKey | None:
    """The unrevoked key with this id, unless the session `session_id` was signed out of; else None. One
    query: every request that carries a session cookie asks it."""
    ended = select(catalog_state.c.key).where(catalog_state.c.key == _ENDED_SESSION + session_id).exists()
    stmt = select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None), ~ended)
    row = (await conn.execute(stmt)).first()
    return None if row is None else StoredApiKey(**row._mapping)


async def _claim_until(
    conn: AsyncConnection, prefix: str, name: str, *, expires_at: datetime, now: datetime
) -> bool:
    """Keep `prefix + name` in catalog_state until `expires_at`, dropping the prefix's expired rows; False
    when it was kept already."""
    await conn.execute(
        delete(catalog_state).where(
            catalog_state.c.key.startswith(prefix, autoescape=True),
            catalog_state.c.value <= _sortable(now),
        )
    )
    stmt = (
        dialect_insert(conn, catalog_state)
        .values(key=prefix + name, value=_sortable(expires_at))
        .on_conflict_do_nothing(index_elements=[catalog_state.c.key])
        .returning(catalog_state.c.key)
    )
    return (await conn.execute(stmt)).first() is not None


def _sortable(at: datetime) -> str:
    """An instant as text that sorts in time order (`value` is a string column)."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
