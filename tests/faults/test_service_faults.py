"""Service faults: Redis restarted and flushed with work queued and delayed; PostgreSQL unreachable 30 s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from dramatiq.brokers.redis import RedisBroker

from tests.faults.conftest import MakeHarness
from tests.faults.fault_smtp import FaultSmtpServer
from tests.faults.harness import Harness
from tests.faults.invariants import CommitWatcher, check_invariants
from tests.faults.services import PrivateRedis, TcpProxy
from tests.faults.test_worker_faults import queue_settled, queued_count, queued_messages

pytestmark = [pytest.mark.integration]

PG_OUTAGE_S = 30


async def test_redis_restarted_and_flushed_with_work_queued_and_delayed(
    harness: Harness, smtp_server: FaultSmtpServer, private_redis: PrivateRedis
) -> None:
    # Given 60 deliveries claimed and enqueued, and copies of their messages waiting in the delayed queue
    harness.import_leads(60)
    harness.start("scheduler")
    await harness.wait_for("60 claims", lambda: _claimed(harness, 60))
    await harness.wait_for("the claims on Redis", lambda: queue_settled(private_redis))
    broker = RedisBroker(url=private_redis.url)  # type: ignore[no-untyped-call]
    for message in queued_messages(private_redis, broker):
        broker.enqueue(message.copy(message_id=str(uuid.uuid4())), delay=60_000)
    broker.close()
    # When Redis is killed and comes back empty
    private_redis.restart()
    harness.faults += 1
    assert queued_count(private_redis) == 0
    # Then, with a worker on the new Redis, the scheduler finds the work again in PostgreSQL
    harness.start("worker")
    await harness.wait_settled(60, timeout_s=60)
    await check_invariants(
        harness.db, smtp_server, name="Redis restarted and flushed", faults=1, due_before=harness.now
    )
    assert await harness.count("sent") == 60


@pytest.fixture
def pg_proxy(clean_pg: str) -> Iterator[TcpProxy]:
    parts = urlsplit(clean_pg)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.mark.slow
async def test_postgresql_unreachable_for_30_seconds(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer, clean_pg: str, pg_proxy: TcpProxy
) -> None:
    # Given a worker and a scheduler that reach PostgreSQL through a proxy, in the middle of 300 sends
    parts = urlsplit(clean_pg)
    proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{pg_proxy.port}").geturl()
    harness = make_harness(database_url_override=proxied)
    smtp_server.default_delay_s = 0.01
    harness.import_leads(300, domains=6)
    watcher = CommitWatcher(harness.db)
    watcher.start()
    scheduler = harness.start("scheduler")
    worker = harness.start("worker")
    await harness.wait_for("50 acceptances", lambda: _holds(len(smtp_server.accepted) >= 50), timeout_s=60)
    # When PostgreSQL becomes unreachable for 30 s
    pg_proxy.cut()
    harness.faults += 1
    holding = {
        row.email
        for row in await harness.rows(
            "SELECT l.email FROM deliveries d JOIN leads l ON l.id = d.lead_id WHERE d.status = 'sending'"
        )
    }
    kept_before = len(smtp_server.accepted)
    await asyncio.sleep(PG_OUTAGE_S)
    during = smtp_server.snapshot()[kept_before:]
    pg_proxy.restore()
    # Then nothing was sent during the outage but what already held a committed claim to send
    assert {a.rcpt for a in during} <= holding
    print(
        f"[faults] kept during the PostgreSQL outage: {len(during)} (in sending at the cut: {len(holding)})"
    )
    # ...and the service recovers by itself: same processes, every delivery settled
    await harness.wait_settled(300, timeout_s=120)
    await watcher.stop()
    assert scheduler.alive
    assert worker.alive
    await check_invariants(
        harness.db,
        smtp_server,
        name="PostgreSQL unreachable 30 s",
        faults=1,
        due_before=harness.now,
        max_unknown=len(holding),
        watcher=watcher,
    )


async def _holds(value: bool) -> bool:
    return value


async def _claimed(harness: Harness, count: int) -> bool:
    return await harness.count("claimed") >= count
