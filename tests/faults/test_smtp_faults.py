"""SMTP faults: temporary failures for one domain, permanent failures, and a server that stalls or hangs up
after DATA (the window in which a sender cannot know whether the message went)."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime
from itertools import pairwise

import pytest

from tests.faults.conftest import MakeHarness
from tests.faults.fault_smtp import FaultSmtpServer, Rule
from tests.faults.harness import START, CampaignSpec, Harness, lead_address
from tests.faults.invariants import check_invariants
from tests.faults.services import PrivateRedis

pytestmark = [pytest.mark.integration]

OFFICE_HOURS = CampaignSpec(days="mon, tue, wed, thu, fri", start="09:00", end="17:00")


@pytest.mark.parametrize("reply", ["421 4.7.0 try again later", "451 4.3.0 local problem"])
async def test_temporary_failures_for_one_domain(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer, reply: str
) -> None:
    # Given 40 leads over 4 domains, one of which answers every message with a temporary failure, late in
    # the afternoon so that retries run into the end of the send window
    harness = make_harness((OFFICE_HOURS,), max_send_attempts="3")
    harness.set_clock(START.replace(hour=16, minute=50))
    smtp_server.program("d1.example", Rule(reply=reply))
    harness.import_leads(40, domains=4)
    harness.start("scheduler")
    harness.start("worker")
    # When time moves on for two days
    await harness.wait_settled(40, step=timedelta(minutes=10), timeout_s=90)
    # Then the other domains got every message at the first attempt
    failing = [a for a in smtp_server.attempts if a.rcpt.endswith("@d1.example")]
    others = [a for a in smtp_server.attempts if not a.rcpt.endswith("@d1.example")]
    assert len(others) == 30
    assert {a.reply for a in others} == {"250"}
    # ...the failing domain was retried a bounded number of times, then recorded failed
    rows = await harness.rows(
        "SELECT d.status, d.attempts FROM deliveries d JOIN leads l ON l.id = d.lead_id "
        "WHERE l.email LIKE '%@d1.example'"
    )
    assert {r.status for r in rows} == {"failed"}
    assert all(r.attempts <= 3 for r in rows)
    assert len(failing) <= 10 * 3
    # ...never outside the window, and each retry later than the one before it (backoff)
    for attempt in smtp_server.attempts:
        sent_at = parsedate_to_datetime(attempt.date)
        assert sent_at.weekday() < 5, attempt
        assert 9 <= sent_at.hour < 17, attempt
    for address in {a.rcpt for a in failing}:
        times = [parsedate_to_datetime(a.date) for a in failing if a.rcpt == address]
        assert all(later > earlier for earlier, later in pairwise(times)), times
    await check_invariants(
        harness.db,
        smtp_server,
        name=f"SMTP {reply[:3]} for one domain",
        faults=len(failing),
        due_before=harness.now,
    )


async def test_a_permanent_failure_suppresses_the_address_across_campaigns(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer
) -> None:
    # Given two campaigns one after the other, and two addresses the server rejects for good
    first = CampaignSpec(id="first", priority=5, steps=(("hello", 0), ("again", 1)))
    second = CampaignSpec(id="second", priority=10, steps=(("next", 0),))
    harness = make_harness((first, second))
    rejected = [lead_address(1, 4), lead_address(2, 4)]
    for address in rejected:
        smtp_server.program(address, Rule(reply="550 5.1.1 no such user"))
    harness.import_leads(12, domains=4)
    harness.start("scheduler")
    harness.start("worker")
    # When both campaigns run their course
    await harness.wait_settled(12 * 3 - 2, step=timedelta(hours=6), timeout_s=90)
    # Then each rejected address was tried exactly once, and is suppressed, its other touches cancelled
    for address in rejected:
        tried = [(a.campaign, a.step, a.reply) for a in smtp_server.attempts if a.rcpt == address]
        assert tried == [("first", "hello", "550")], tried
    rows = await harness.rows(
        "SELECT l.email, l.suppressed, d.campaign_id, d.status "
        "FROM leads l JOIN deliveries d ON d.lead_id = l.id "
        "WHERE l.email IN (:a, :b)",
        a=rejected[0],
        b=rejected[1],
    )
    assert all(r.suppressed for r in rows)
    assert {(r.campaign_id, r.status) for r in rows} <= {
        ("first", "failed"),
        ("first", "cancelled"),
        ("first", "bounced"),
    }
    # ...while everyone else went through both campaigns
    assert await harness.count("sent") == 10 * 3
    await check_invariants(harness.db, smtp_server, name="SMTP 550", faults=2, due_before=harness.now)


async def test_a_server_that_stalls_or_hangs_up_after_data(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer
) -> None:
    # Given a server that keeps two messages but never answers one in time and hangs up on the other
    harness = make_harness(smtp_timeout_s="1")
    stalled, dropped = lead_address(1, 4), lead_address(2, 4)
    smtp_server.program(stalled, Rule(after_data="stall", stall_s=5))
    smtp_server.program(dropped, Rule(after_data="drop"))
    harness.import_leads(20, domains=4)
    harness.start("scheduler")
    harness.start("worker")
    # When the queue is worked through and time moves past every lease
    await harness.wait_settled(20, timeout_s=90)
    # Then both are `unknown` (the server has them), reported, and neither was sent again
    rows = await harness.rows(
        "SELECT l.email, d.status FROM leads l JOIN deliveries d ON d.lead_id = l.id "
        "WHERE l.email IN (:a, :b)",
        a=stalled,
        b=dropped,
    )
    assert {r.email: r.status for r in rows} == {stalled: "unknown", dropped: "unknown"}
    kept = [a.rcpt for a in smtp_server.accepted]
    assert kept.count(stalled) == 1
    assert kept.count(dropped) == 1
    await check_invariants(
        harness.db,
        smtp_server,
        name="SMTP stall/drop after DATA",
        faults=2,
        due_before=harness.now,
        max_unknown=2,
    )


async def test_a_permanent_failure_stops_the_leads_other_touches_due_at_the_same_time(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer, private_redis: PrivateRedis
) -> None:
    # Given two steps of each lead due at once (Redis lost the first one's message and the scheduler was
    # down a day), and one address the server rejects for good
    harness = make_harness((CampaignSpec(steps=(("hello", 0), ("again", 1))),))
    rejected = lead_address(1, 4)
    smtp_server.program(rejected, Rule(reply="550 5.1.1 no such user"))
    harness.import_leads(8, domains=4)
    scheduler = harness.start("scheduler")
    await harness.wait_for("the first claims", lambda: _claimed_at_least(harness, 8))
    scheduler.kill9()
    private_redis.restart()
    harness.faults += 2
    harness.advance(timedelta(days=1, hours=1))
    # When the scheduler and a worker start
    harness.start("scheduler")
    harness.start("worker")
    await harness.wait_settled(16, timeout_s=60)
    # Then the rejected address got one attempt only: its second touch was stopped by the suppression
    tried = [(a.step, a.reply) for a in smtp_server.attempts if a.rcpt == rejected]
    assert len(tried) == 1, tried
    await check_invariants(
        harness.db, smtp_server, name="SMTP 550 in a catch-up", faults=3, due_before=harness.now
    )


async def _claimed_at_least(harness: Harness, count: int) -> bool:
    return await harness.count("claimed") >= count
