"""A tracking web on 127.0.0.1 over a migrated SQLite file, with an API key, for the attack tests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from nurture.clock import FrozenClock
from nurture.db.migrate import upgrade
from nurture.flows.deliver import Outcome, deliver
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from nurture.web.auth import issue_api_key
from nurture.web.server import WebAddress, build_server
from tests.harness.ports import listening_socket
from tests.project import PROJECT

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "attack-test-secret-key-0123456789"
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei: the first step is due at once


@dataclass
class Site:
    client: httpx.AsyncClient
    runtime: Runtime
    clock: FrozenClock
    base_url: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}

    async def mail_first_step(self, address: str, **fields: str) -> int:
        """Import, enroll and send a lead's first email to the outbox; the delivery id."""
        row = {"email": address, "grade": "nurturable", "timezone": "Asia/Taipei", **fields}
        await import_leads(self.runtime.db, [row], now=START)
        await enroll(self.runtime.db, self.runtime.catalog, START)
        lease, stale = timedelta(minutes=10), timedelta(minutes=5)
        claimed = (await dispatch(self.runtime.db, START, lease=lease, limit=10, stale_after=stale)).claimed
        outcomes = [
            await deliver(i, db=self.runtime.db, mailer=self.runtime.mailer, now=START) for i in claimed
        ]
        assert outcomes == [Outcome.SENT]
        return claimed[0]


SiteFactory = Callable[..., Any]


@pytest.fixture
async def site_factory(tmp_path: Path) -> AsyncIterator[SiteFactory]:
    """Start a site with extra settings (e.g. `api_burst=3`); stopped after the test."""
    stack: list[tuple[Any, asyncio.Task[None], Runtime, socket.socket]] = []

    async def start(**extra: Any) -> Site:
        sock = listening_socket()
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings.model_validate(
            {
                "data_dir": tmp_path / f"var{len(stack)}",
                "campaigns_dir": ROOT / "campaigns",
                "templates_dir": ROOT / "templates",
                "reps_file": ROOT / "reps.yaml",
                "secret_key": SECRET,
                "base_url": base_url,
                "log_level": "WARNING",
                **extra,
            }
        )
        clock = FrozenClock(START)
        runtime = build_runtime(settings, clock=clock)
        await upgrade(runtime.db)
        issued = await issue_api_key(runtime.db, name="attacks", now=START)
        server = build_server(runtime, WebAddress("127.0.0.1", sock.getsockname()[1]))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        stack.append((server, task, runtime, sock))
        client = httpx.AsyncClient(base_url=base_url, timeout=10)
        return Site(client, runtime, clock, base_url, issued.key)

    yield start
    for server, task, runtime, sock in stack:
        server.should_exit = True
        await task
        await runtime.aclose()
        sock.close()


@pytest.fixture
async def site(site_factory: SiteFactory) -> AsyncIterator[Site]:
    started: Site = await site_factory()
    async with started.client:
        yield started
