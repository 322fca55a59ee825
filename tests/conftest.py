"""Shared fixtures: `db` runs every test that takes it on SQLite and on PostgreSQL; `cli` runs `nurture`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nurture.db.engine import Database
from tests import services
from tests.harness.cli import Cli


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"nurture_test_{os.getpid()}"
    url = services.create_pg_database(name)
    yield url
    services.drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "template.db"
    services.create_sqlite_database(path)
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        return services.copy_sqlite_database(sqlite_template, tmp_path / "nurture.db")
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url)
    if not database.is_sqlite:
        await services.truncate_all(database)
    yield database
    await database.aclose()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    """`nurture` run in tmp_path on its own embedded database (tests/harness/cli.py)."""
    return Cli.in_folder(tmp_path, COLUMNS="80")  # a reason rich wrapped at 80 columns is no longer one line
