"""A tracking web on 127.0.0.1 over a migrated SQLite file, with an API key, for the attack tests."""

from __future__ import annotations

import asyncio
import email
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from nurture.clock import FrozenClock
from nurture.db.migrate import upgrade
from nurture.event_consumer import BatchReport, EnqueueRescores, EventConsumer
from nurture.event_stream import STREAM, EventStream
from nurture.flows.deliver import Outcome, deliver
from nurture.flows.ingest import import_leads
from nurture.flows.tick import dispatch, enroll
from nurture.runtime import Runtime, build_runtime
from nurture.settings import Settings
from nurture.web.auth import issue_api_key
from nurture.web.server import WebAddress, build_server
from tests.harness.ports import listening_socket
from tests.project import PROJECT
from tests.services import REDIS_URL, require_service

ROOT = PROJECT  # the tests' own project files (tests/project.py)
SECRET = "attack-test-secret-key-0123456789"
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # Monday 10:00 in Taipei: the first step is due at once
ERASED_REFRESH_S = 0.05  # NURTURE_ERASED_REFRESH_S of the buffered site: how stale its erased set may be


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

    def first_email_html(self) -> str:
        """The HTML body of the one email in the outbox (what `mail_first_step` sent)."""
        [eml] = self.runtime.settings.outbox_dir.glob("*.eml")
        message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        body = message.get_body(("html",))
        assert body is not None
        html: str = body.get_content()
        return html

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


@pytest.fixture
async def buffered_site(site_factory: SiteFactory) -> AsyncIterator[Site]:
    """The site with Redis: tracking events are stream entries until a worker's consumer stores them
    (`store_buffered`); its erased set is read every `ERASED_REFRESH_S`."""
    require_service(REDIS_URL, "Redis")
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(STREAM)  # the test Redis database is this suite's own
    started: Site = await site_factory(redis_url=REDIS_URL, erased_refresh_s=ERASED_REFRESH_S)
    try:
        async with started.client:
            yield started
    finally:
        client.delete(STREAM)
        client.close()


async def store_buffered(site: Site, enqueue_rescores: EnqueueRescores = lambda _ids: None) -> BatchReport:
    """Store one batch of what the web buffered, as a worker's consumer does."""
    stream = EventStream.from_url(REDIS_URL, timeout_s=5)
    try:
        await stream.ensure_group()
        consumer = EventConsumer(stream, site.runtime.db, site.runtime.clock, enqueue_rescores, name="t")
        return await consumer.step()
    finally:
        await stream.aclose()
