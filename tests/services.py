"""Real services for tests: a PostgreSQL database per test session, a migrated SQLite file, Redis.

A service that is down skips its tests on a developer machine but fails them under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from nurture.db.engine import Database
from nurture.db.migrate import upgrade

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_ADMIN_URL = os.environ.get("NURTURE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NURTURE_TEST_REDIS", "redis://127.0.0.1:6379/15")
TABLES = (
    "stage_changes",
    "touchpoints",
    "events",
    "alerts",
    "deliveries",
    "enrollments",
    "leads",
    "scheduler_leases",
    "catalog_state",
    "api_keys",
    "suppressions",
    "send_domains",
    "domain_send_windows",
    "campaign_versions",
)


def require_service(url: str, name: str) -> None:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=1):
            return
    except OSError:
        message = f"{name} is not reachable at {parts.hostname}:{parts.port}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_pg_database(name: str) -> str:
    """Create a fresh, migrated database `name` next to the admin database; return its URL."""
    require_service(PG_ADMIN_URL, "PostgreSQL")
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_migrate(url))
    return url


def drop_pg_database(name: str) -> None:
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def create_sqlite_database(path: Path) -> str:
    url = f"sqlite:///{path}"
    asyncio.run(_migrate(url))
    return url


def copy_sqlite_database(template: Path, target: Path) -> str:
    shutil.copyfile(template, target)
    return f"sqlite:///{target}"


async def truncate_all(db: Database) -> None:
    async with db.transaction() as conn:
        await conn.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")


async def _migrate(url: str) -> None:
    db = Database(url)
    try:
        await upgrade(db)
    finally:
        await db.aclose()
