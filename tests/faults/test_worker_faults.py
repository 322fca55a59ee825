"""Worker faults: kill -9 mid-send, a crash inside the SMTP window, duplicated and replayed broker messages,
SIGTERM under load, and a poison message."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from tests.faults.conftest import MakeHarness
from tests.faults.fault_smtp import Accepted, FaultSmtpServer
from tests.faults.harness import CampaignSpec, Harness
from tests.faults.invariants import CommitWatcher, check_invariants
from tests.faults.services import PrivateRedis

pytestmark = [pytest.mark.integration]

# The known bug these tests show (see the fault suite's report): flows/deliver.py deliver_batch.


async def test_a_quiet_run_sends_every_due_touch_once(harness: Harness, smtp_server: FaultSmtpServer) -> None:
    # Given 40 leads over 4 domains, a scheduler and a worker, and no fault
    harness.import_leads(40)
    watcher = CommitWatcher(harness.db)
    watcher.start()
    harness.start("scheduler")
    harness.start("worker")
    # When simulated time moves on until nothing is open
    await harness.wait_settled(40)
    await watcher.stop()
    # Then every one went once
    summary = await check_invariants(
        harness.db, smtp_server, name="baseline", faults=0, due_before=harness.now, watcher=watcher
    )
    assert await harness.count("sent") == 40
    assert summary.deliveries == 40


@pytest.mark.slow
async def test_kill_9_of_a_worker_with_a_thousand_sends_in_flight(
    harness: Harness, smtp_server: FaultSmtpServer
) -> None:
    # Given 1,000 due deliveries, a slowish SMTP server and a worker busy sending them
    smtp_server.default_delay_s = 0.005
    harness.import_leads(1000, domains=10)
    watcher = CommitWatcher(harness.db)
    watcher.start()
    harness.start("scheduler")
    worker = harness.start("worker", worker_threads="16")
    await harness.wait_for("300 acceptances", lambda: _accepted_at_least(smtp_server, 300), timeout_s=120)
    # When the worker is killed with SIGKILL mid-stream, then a new one is started
    worker.kill9()
    in_flight = await harness.count("sending")
    harness.faults += 1
    harness.start("worker", worker_threads="16")
    await harness.wait_settled(1000, timeout_s=180)
    await watcher.stop()
    # Then nothing was sent twice or lost; only what was inside the SMTP conversation may be `unknown`
    summary = await check_invariants(
        harness.db,
        smtp_server,
        name="kill -9 worker",
        faults=harness.faults,
        due_before=harness.now,
        max_unknown=in_flight,
        watcher=watcher,
    )
    assert summary.deliveries == 1000
    assert await harness.count("sent") + summary.unknown == 1000


async def test_a_crash_after_the_server_kept_the_message_and_before_the_commit(
    harness: Harness, smtp_server: FaultSmtpServer
) -> None:
    # Given a worker sending 30 deliveries
    harness.import_leads(30)
    harness.start("scheduler")
    worker = harness.start("worker", worker_threads="1")
    victims: list[Accepted] = []

    def kill_on_the_fifth(accepted: Accepted) -> None:
        # runs on the SMTP server's thread, before its 250 goes out: the worker dies inside the window
        if len(smtp_server.accepted) == 5 and not victims:
            victims.append(accepted)
            os.kill(worker.popen.pid, signal.SIGKILL)

    smtp_server.on_accept = kill_on_the_fifth
    await harness.wait_for("the crash", lambda: _true(bool(victims) and not worker.alive), timeout_s=60)
    harness.faults += 1
    smtp_server.on_accept = None
    # (the worker sends over a small pool of connections: the others in a conversation at that moment are
    # inside the window too)
    in_flight = await harness.count("sending")
    # When a new worker takes over and time moves on past every lease
    harness.start("worker")
    await harness.wait_settled(30)
    # Then the message the server kept is recorded `unknown`, and it was never sent again
    summary = await check_invariants(
        harness.db,
        smtp_server,
        name="crash inside the SMTP window",
        faults=1,
        due_before=harness.now,
        max_unknown=in_flight,
    )
    assert 1 <= summary.unknown <= in_flight
    victim = victims[0]
    status = await harness.scalar(
        "SELECT d.status FROM deliveries d JOIN leads l ON l.id = d.lead_id WHERE l.email = :email",
        email=victim.rcpt,
    )
    assert status == "unknown"
    assert smtp_server.accepted_ids()[victim.message_id] == 1


async def test_duplicated_and_replayed_broker_messages_send_nothing_twice(
    harness: Harness, smtp_server: FaultSmtpServer, private_redis: PrivateRedis
) -> None:
    # Given 60 deliveries claimed and enqueued by the scheduler, with no worker yet
    harness.import_leads(60)
    scheduler = harness.start("scheduler")
    await harness.wait_for("60 claims", lambda: _status_count_at_least(harness, "claimed", 60))
    await harness.wait_for("the claims on Redis", lambda: queue_settled(private_redis))
    scheduler.kill9()
    broker = RedisBroker(url=private_redis.url)  # type: ignore[no-untyped-call]
    originals = queued_messages(private_redis, broker)
    assert originals, "the scheduler enqueued nothing on Redis"
    # When every message is enqueued a second time
    for message in originals:
        broker.enqueue(message.copy(message_id=str(uuid.uuid4())))
    harness.faults += len(originals)
    worker = harness.start("worker")
    await harness.wait_settled(60)
    # ...and, after everything went, the old payloads are replayed once more
    for message in originals:
        broker.enqueue(message.copy(message_id=str(uuid.uuid4())))
    harness.faults += len(originals)
    await harness.wait_for("the replay to drain", lambda: _true(_queue_empty(private_redis)), timeout_s=60)
    assert worker.terminate() == 0, worker.log()[-2000:]
    broker.close()
    # Then each delivery reached the SMTP server once
    summary = await check_invariants(
        harness.db,
        smtp_server,
        name="duplicated broker messages",
        faults=harness.faults,
        due_before=harness.now,
    )
    assert await harness.count("sent") == 60 == len(smtp_server.accepted)
    assert summary.duplicates == 0


@pytest.mark.slow
async def test_sigterm_under_load_leaves_nothing_in_sending(
    harness: Harness, smtp_server: FaultSmtpServer
) -> None:
    # Given a worker in the middle of 400 sends to a slow server
    smtp_server.default_delay_s = 0.02
    harness.import_leads(400)
    harness.start("scheduler")
    worker = harness.start("worker", worker_threads="16")
    await harness.wait_for("100 acceptances", lambda: _accepted_at_least(smtp_server, 100), timeout_s=60)
    # When it gets SIGTERM
    code = worker.terminate(timeout_s=90)
    harness.faults += 1
    # Then it exits cleanly, having finished or released what it held: nothing is left mid-send
    assert code == 0, worker.log()[-2000:]
    assert await harness.count("sending") == 0
    # ...and a new worker finishes the rest without a duplicate or an unknown
    harness.start("worker", worker_threads="16")
    await harness.wait_settled(400, timeout_s=120)
    await check_invariants(
        harness.db, smtp_server, name="SIGTERM under load", faults=1, due_before=harness.now
    )
    assert await harness.count("sent") == 400


async def test_a_poison_message_fails_alone_and_is_reported(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer
) -> None:
    harness = make_harness(
        (
            CampaignSpec(id="broken", priority=5, sources="poison", poison_steps=frozenset({"hello"})),
            CampaignSpec(id="faults", priority=10, sources="web"),
        )
    )
    # Given 40 leads, every fourth one in a campaign whose template can never render
    harness.import_leads(40, source=lambda i: "poison" if i % 4 == 0 else "web")
    harness.start("scheduler")
    worker = harness.start("worker")
    # When the queue is worked through
    await harness.wait_settled(40)
    # Then the poisoned deliveries failed after a bounded number of attempts, with the reason recorded
    rows = await harness.rows(
        "SELECT id, status, attempts, last_error FROM deliveries WHERE campaign_id = 'broken'"
    )
    assert len(rows) == 10
    assert {r.status for r in rows} == {"failed"}
    assert max(r.attempts for r in rows) <= 3
    assert all("render" in (r.last_error or "") for r in rows)
    # ...an operator sees each one in the worker's log, by id
    log = worker.log()
    assert all(f"delivery_id={r.id}" in log for r in rows), log[-2000:]
    # ...and the rest of the queue went out untouched
    assert await harness.count("sent") == 30
    await check_invariants(harness.db, smtp_server, name="poison message", faults=10, due_before=harness.now)


def queued_messages(redis_server: PrivateRedis, broker: RedisBroker) -> list[dramatiq.Message[object]]:
    """Every message the Redis broker holds for the deliveries queue (ready or delayed)."""
    client = redis_server.client()
    try:
        found = []
        for key in client.scan_iter("dramatiq:*deliveries*.msgs"):
            for payload in client.hvals(key):
                message = dramatiq.Message.decode(payload if isinstance(payload, bytes) else payload.encode())
                found.append(message.copy(queue_name=message.queue_name.removesuffix(".DQ")))
        for name in {m.queue_name for m in found}:
            broker.declare_queue(name)
        return found
    finally:
        client.close()


def queued_count(redis_server: PrivateRedis) -> int:
    client = redis_server.client()
    try:
        return sum(int(client.hlen(key)) for key in client.scan_iter("dramatiq:*deliveries*.msgs"))
    finally:
        client.close()


async def queue_settled(redis_server: PrivateRedis) -> bool:
    """Messages are queued and no more arrive (however the scheduler groups deliveries into messages)."""
    before = queued_count(redis_server)
    await asyncio.sleep(0.5)
    return before > 0 and queued_count(redis_server) == before


def _queue_empty(redis_server: PrivateRedis) -> bool:
    return queued_count(redis_server) == 0


async def _true(value: bool) -> bool:
    return value


async def _accepted_at_least(server: FaultSmtpServer, count: int) -> bool:
    return len(server.accepted) >= count


async def _status_count_at_least(harness: Harness, status: str, count: int) -> bool:
    return await harness.count(status) >= count
