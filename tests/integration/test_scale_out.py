"""Scale-out: several scheduler and worker processes give the same results as one, and a dead leader's lease
passes to another scheduler within two ticks.

The scenario is the nurture loop's (tests/integration/nurture_loop.py): 300 mixed leads through 25 simulated
days on PostgreSQL and Redis, here with 2 `nurture scheduler` and 3 `nurture worker` processes sharing a clock
file. The test only moves the clock; the schedulers' own jobs enroll and dispatch. Halfway, the leading
scheduler is killed with SIGKILL and the other one carries on.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import func, or_, select

from nurture.clock import FileClock, FrozenClock
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries, leads, scheduler_leases
from nurture.scheduler import RENEWALS_PER_INTERVAL, Scheduler
from nurture.service import open_service
from tests import services
from tests.integration.nurture_loop import START, check_outcome, run_days, seed
from tests.integration.test_nurture_loop import SECRET, _environment, _settings, redis_url  # noqa: F401
from tests.smtp_sink import SmtpSink, smtp_sink_fixture  # noqa: F401

pytestmark = [pytest.mark.integration]

TICK_S = "0.05"  # the schedulers' interval, in wall-clock seconds
SETTLE_TIMEOUT_S = 60


class Processes:
    """Named `nurture` subprocesses with their logs; killed at the end whatever happened."""

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.env, self.folder = env, folder
        self.running: dict[str, tuple[subprocess.Popen[bytes], IO[str]]] = {}

    def start(self, name: str, command: str) -> None:
        log = (self.folder / f"{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "nurture", command], env=self.env, cwd=self.folder, stderr=log
        )
        self.running[name] = (process, log)

    def kill(self, pid: int) -> str:
        name = next(n for n, (p, _) in self.running.items() if p.pid == pid)
        process, log = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        log.close()
        return name

    def stop_all(self) -> dict[str, int | None]:
        for process, _ in self.running.values():
            process.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, (process, log) in self.running.items():
            try:
                codes[name] = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = None
            log.close()
        return codes

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.folder.glob("*.log")))


@pytest.fixture
def cluster_env(tmp_path: Path, pg_url: str, redis_url: str, smtp_sink: SmtpSink) -> dict[str, str]:  # noqa: F811
    clock_file = tmp_path / "clock"
    FileClock.write(clock_file, START)
    return _environment(
        tmp_path,
        NURTURE_DATABASE_URL=pg_url,
        NURTURE_REDIS_URL=redis_url,
        NURTURE_SMTP_URL=smtp_sink.url,
        NURTURE_CLOCK_FILE=str(clock_file),
        NURTURE_WORKER_THREADS="2",
        NURTURE_TICK_INTERVAL_S=TICK_S,
    )


async def _settled(db: Database, now: datetime) -> bool:
    """Nothing left to do at `now`: no lead waits for an enrollment check, no due delivery is open."""
    async with db.transaction() as conn:
        flagged = (
            await conn.execute(select(func.count()).select_from(leads).where(leads.c.enroll_pending))
        ).scalar_one()
        busy = (
            await conn.execute(
                select(func.count())
                .select_from(deliveries)
                .where(
                    or_(
                        deliveries.c.status.in_(("claimed", "sending")),
                        (deliveries.c.status == "pending") & (deliveries.c.due_at <= now),
                    )
                )
            )
        ).scalar_one()
    return flagged == 0 and busy == 0


async def _leader_pid(db: Database) -> int | None:
    async with db.transaction() as conn:
        holder = (await conn.execute(select(scheduler_leases.c.holder))).scalar_one_or_none()
    return None if holder is None else int(holder.split(":")[1])


@pytest.mark.slow
async def test_two_schedulers_and_three_workers_send_every_delivery_exactly_once(
    tmp_path: Path, pg_url: str, smtp_sink: SmtpSink, cluster_env: dict[str, str]
) -> None:
    # Given 300 imported leads, 2 scheduler processes and 3 worker processes on one simulated clock
    db = Database(pg_url)
    await services.truncate_all(db)
    suppressed = await seed(db)
    clock_file = Path(cluster_env["NURTURE_CLOCK_FILE"])
    processes = Processes(cluster_env, tmp_path)
    for n in (1, 2, 3):
        processes.start(f"worker-{n}", "worker")
    for n in (1, 2):
        processes.start(f"scheduler-{n}", "scheduler")
    killed: list[str] = []

    async def tick(now: datetime) -> None:
        FileClock.write(clock_file, now)
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
        while not await _settled(db, now):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"work due at {now} was not done in {SETTLE_TIMEOUT_S} s")
            await asyncio.sleep(0.02)
        # Halfway through, with nothing in flight, the leader dies without giving up its lease.
        if not killed and now >= START + timedelta(days=10):
            leader = await _leader_pid(db)
            assert leader is not None
            killed.append(processes.kill(leader))

    # When the clock moves through 25 days
    try:
        ticks = await run_days(db, tick)
        service = await open_service(_settings(cluster_env), clock=FrozenClock(START))
        try:
            # Then every fitting lead got its steps once, in order, in its window: as with one of each
            counts = await check_outcome(db, service.runtime.catalog, smtp_sink.messages, suppressed)
        finally:
            await service.runtime.aclose()
    except BaseException:
        processes.stop_all()
        print(processes.logs())
        raise
    finally:
        await db.aclose()
    codes = processes.stop_all()
    assert killed
    assert all(code == 0 for code in codes.values()), (codes, processes.logs())
    print(f"scale-out: {ticks} ticks, killed {killed[0]}, {counts}")


async def test_a_dead_leaders_lease_passes_to_another_scheduler_within_two_ticks(
    tmp_path: Path, pg_url: str
) -> None:
    settings = _settings(_environment(tmp_path, NURTURE_DATABASE_URL=pg_url, NURTURE_TICK_INTERVAL_S="10"))
    clock = FrozenClock(START)
    db = Database(pg_url)
    await services.truncate_all(db)
    service = await open_service(settings, clock=clock)
    try:
        leader, follower = (Scheduler(service.runtime, service.actors) for _ in range(2))
        interval, renew_every = leader.interval, leader.interval / RENEWALS_PER_INTERVAL
        for phase in (0.01, 0.5, 0.99):  # where the follower's ticks fall between the leader's renewals
            async with db.transaction() as conn:
                await conn.execute(scheduler_leases.delete())
            t0 = START + timedelta(days=1)
            assert await leader.holds_lease(t0)
            died = t0 + 3 * interval  # the leader's last renewal
            renewals = [t0 + renew_every * k for k in range(1, 3 * RENEWALS_PER_INTERVAL + 1)]
            follower_ticks = [t0 + interval * (j + phase) for j in range(10)]
            # While the leader renews, the follower never leads.
            for at in sorted([*renewals, *(t for t in follower_ticks if t <= died)]):
                if at in follower_ticks:
                    assert not await follower.holds_lease(at)
                else:
                    assert await leader.holds_lease(at)
            # Then the leader dies without giving up its lease, and the follower keeps ticking.
            after = [t for t in follower_ticks if t > died]
            took_over_at = None
            for n, at in enumerate(after, 1):
                if await follower.holds_lease(at):
                    took_over_at = n
                    break
            assert took_over_at is not None
            assert took_over_at <= 2, f"phase {phase}: the follower led only at its tick {took_over_at}"
            # A leader that was only paused comes back to find the lease taken, and stands down.
            assert not await leader.holds_lease(after[took_over_at - 1])
    finally:
        await service.runtime.aclose()
        await db.aclose()
