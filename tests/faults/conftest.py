"""Fixtures of the fault suite: a misbehaving SMTP server, a private Redis, and the harness around them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from nurture.db.engine import Database
from tests.faults.fault_smtp import FaultSmtpServer
from tests.faults.harness import CampaignSpec, Harness, truncate_everything
from tests.faults.services import PrivateRedis


@pytest.fixture
def smtp_server() -> Iterator[FaultSmtpServer]:
    with FaultSmtpServer() as server:
        yield server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def clean_pg(pg_url: str) -> str:
    db = Database(pg_url)
    try:
        await truncate_everything(db)
    finally:
        await db.aclose()
    return pg_url


class MakeHarness(Protocol):
    def __call__(
        self, campaigns: tuple[CampaignSpec, ...] = ..., database_url_override: str = ..., **settings: str
    ) -> Harness: ...


@pytest.fixture
async def make_harness(
    tmp_path: Path, clean_pg: str, private_redis: PrivateRedis, smtp_server: FaultSmtpServer
) -> AsyncIterator[MakeHarness]:
    """Build a harness with other campaigns or settings (`NURTURE_*` names, lower-case, without the prefix);
    `database_url_override` is what the processes use (a proxy), the test itself reads the real database."""
    made: list[Harness] = []

    def make(
        campaigns: tuple[CampaignSpec, ...] = (CampaignSpec(),),
        database_url_override: str = "",
        **settings: str,
    ) -> Harness:
        rig = Harness.create(
            tmp_path,
            database_url=database_url_override or clean_pg,
            check_url=clean_pg,
            redis_url=private_redis.url,
            smtp_url=smtp_server.url,
            campaigns=campaigns,
            **settings,
        )
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.close()


@pytest.fixture
def harness(make_harness: MakeHarness) -> Harness:
    """The default setup: one campaign, one step due at once, every day, all day (UTC)."""
    return make_harness()
