"""The async engine and its transactions, for PostgreSQL (asyncpg) and SQLite (aiosqlite).

SQLite runs in WAL mode and opens every transaction with BEGIN IMMEDIATE: a writer waits for the lock
(busy timeout) up front instead of failing when it upgrades a read transaction, so several threads and
processes can share one file safely.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from nurture.errors import ConfigError, DatabaseUnavailableError
from nurture.settings import async_database_url, redact_url

SQLITE_BUSY_TIMEOUT_S = 30


class Database:
    """An engine plus the one way flows open a transaction."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        """Open an engine on `url` (see `settings.async_database_url` for the forms accepted).

        Raises `ConfigError` for a URL of another driver or one that does not parse.
        """
        try:
            self.url = async_database_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc), source="NURTURE_DATABASE_URL") from None
        self.dialect = make_url(self.url).get_backend_name()
        self.engine: AsyncEngine = _create_engine(self.url, pool_size=pool_size)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Open a connection in a transaction that commits on exit and rolls back on error.

        Raises `DatabaseUnavailableError` when no connection can be made.
        """
        try:
            conn = await self.engine.connect()
        except (DBAPIError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise DatabaseUnavailableError(f"cannot connect to {redact_url(self.url)}: {reason}") from exc
        try:
            async with conn.begin():
                yield conn
        finally:
            await conn.close()

    async def check_reachable(self) -> None:
        """Open and close one connection; raises `DatabaseUnavailableError` when none can be made."""
        async with self.transaction():
            pass

    async def aclose(self) -> None:
        await self.engine.dispose()


def _create_engine(url: str, *, pool_size: int) -> AsyncEngine:
    if make_url(url).get_backend_name() != "sqlite":
        return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
    event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let us issue BEGIN ourselves (the driver's implicit BEGIN is DEFERRED).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")
