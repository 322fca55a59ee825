"""Scheduler faults: several schedulers at once, a scheduler down for hours, the leader killed."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime

import pytest

from tests.faults.conftest import MakeHarness
from tests.faults.fault_smtp import FaultSmtpServer
from tests.faults.harness import START, CampaignSpec, Harness
from tests.faults.invariants import check_invariants

pytestmark = [pytest.mark.integration]

FOUR_DAYS = CampaignSpec(steps=(("d0", 0), ("d1", 1), ("d2", 2), ("d3", 3)))


@pytest.mark.slow
async def test_three_schedulers_at_once_for_many_ticks(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer
) -> None:
    # Given three scheduler processes and two workers, and 60 leads in a four-step campaign
    harness = make_harness((FOUR_DAYS,), tick_interval_s="0.1")
    harness.import_leads(60, domains=5)
    for _ in range(3):
        harness.start("scheduler")
    harness.start("worker")
    harness.start("worker")
    # When they tick through the four days (every step of simulated time sees many ticks of each)
    await harness.wait_settled(240, timeout_s=120)
    # Then every step of every lead went once
    await check_invariants(harness.db, smtp_server, name="three schedulers", faults=2, due_before=harness.now)
    assert await harness.count("sent") == 240


async def test_a_scheduler_down_for_hours_catches_up_once(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer
) -> None:
    # Given a three-step office-hours campaign that skips a touch found more than 12 hours late
    campaign = CampaignSpec(
        steps=(("d0", 0), ("d1", 1), ("d2", 2)),
        days="mon, tue, wed, thu, fri",
        start="09:00",
        end="17:00",
        skip_late_after_hours=12,
    )
    harness = make_harness((campaign,))
    harness.import_leads(30)
    scheduler = harness.start("scheduler")
    harness.start("worker")
    await harness.wait_for("day 0 sent", lambda: _sent_at_least(harness, 30), timeout_s=60)
    # When the scheduler stops on Monday and is back on Wednesday at noon, 50 hours later
    assert scheduler.terminate() == 0, scheduler.log()[-2000:]
    harness.faults += 1
    harness.set_clock(START + timedelta(hours=50))
    harness.start("scheduler")
    await harness.wait_settled(90, step=timedelta(hours=1), timeout_s=90)
    # Then Tuesday's touch, 26 hours late, was skipped with the reason recorded, and Wednesday's went out
    rows = await harness.rows("SELECT step_id, status, last_error FROM deliveries")
    by_step = {step: {r.status for r in rows if r.step_id == step} for step in ("d0", "d1", "d2")}
    assert by_step == {"d0": {"sent"}, "d1": {"skipped"}, "d2": {"sent"}}, rows[:5]
    assert all(r.last_error for r in rows if r.status == "skipped")
    # ...every message inside the window, none twice
    for accepted in smtp_server.accepted:
        sent_at = parsedate_to_datetime(accepted.date)
        assert sent_at.weekday() < 5, accepted
        assert 9 <= sent_at.hour < 17, accepted
    await check_invariants(
        harness.db, smtp_server, name="scheduler down 50 h", faults=1, due_before=harness.now
    )


async def test_the_leader_killed_is_replaced_within_two_ticks(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer
) -> None:
    # Given two schedulers, one of them leading, and a worker
    interval = timedelta(seconds=0.5)
    harness = make_harness(tick_interval_s=str(interval.total_seconds()))
    first, second = harness.start("scheduler"), harness.start("scheduler")
    pids = {first.popen.pid, second.popen.pid}
    harness.start("worker")
    await harness.wait_for("a leader", lambda: _leader_is_one_of(harness, pids))
    leader_pid = await _leader_pid(harness, pids)
    leader, survivor = (first, second) if leader_pid == first.popen.pid else (second, first)
    # When the leader is killed with SIGKILL (it cannot hand the lease over) and two ticks' time passes
    leader.kill9()
    harness.faults += 1
    harness.advance(2 * interval)
    # Then the other one leads, and works: new leads are enrolled and mailed
    await harness.wait_for(
        "another leader", lambda: _leader_is_one_of(harness, {survivor.popen.pid}), timeout_s=20
    )
    harness.import_leads(20)
    await harness.wait_settled(20)
    await check_invariants(harness.db, smtp_server, name="leader killed", faults=1, due_before=harness.now)
    assert await harness.count("sent") == 20


async def _leader_pid(harness: Harness, candidates: set[int]) -> int | None:
    """The pid of the process holding an unexpired scheduler lease (holders name their pid), if one does."""
    holder = await harness.scalar(
        "SELECT holder FROM scheduler_leases WHERE expires_at > :now", now=harness.now
    )
    parts = set(str(holder).split(":")) if holder else set()
    return next((pid for pid in candidates if str(pid) in parts), None)


async def _leader_is_one_of(harness: Harness, pids: set[int]) -> bool:
    return await _leader_pid(harness, pids) is not None


async def _sent_at_least(harness: Harness, count: int) -> bool:
    return await harness.count("sent") >= count
