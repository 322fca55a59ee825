"""Load: a day's touches for 100,000 enrolled leads across 20 recipient domains, under per-domain caps.

One scheduler and two workers send every lead's day-0 touch while simulated time moves on an hour (one rate
limit window) at a time, and only once everything the window allows is done. Two domains are capped: one
hard enough that a backlog is left for the next day, one that binds for the first hours and then drains;
the other 18 have a cap they never reach.

The default is 50,000 leads, not the 100,000 of the goal, to stay near 5 minutes on 2 shared cores: the
full 100,000 (`NURTURE_LOAD_LEADS=100000`) passed in 9 min 40 s at 175 sends/s with the machine's load
average at 6-7, and its CPU went to the two workers (283 s, about 2.8 ms per email between them), this
process's SMTP server parsing every message it keeps (about 170 s) and the scheduler (66 s): over 260 s of
wall time even on two idle cores. 50,000 took 3 min 48 s (224 sends/s) and 60,000 took 5 min 57 s
(171 sends/s) on the same machine. `NURTURE_LOAD_LEADS` sets the size; CI runs the full 100,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from nurture.db.engine import Database
from tests.faults.conftest import MakeHarness
from tests.faults.fault_smtp import FaultSmtpServer
from tests.faults.harness import START, Harness
from tests.faults.invariants import check_invariants

pytestmark = [pytest.mark.integration]

DOMAINS = 20
WINDOW = timedelta(hours=1)  # the period of every cap below: windows are clock hours
DAY = 24  # windows in the day the test moves through
TIMEOUT_S = 1800  # wall time for the whole run, far above what it takes
# The test's own database connections carry this name, so the connection count leaves them out.
CHECKER = "nurture-load-check"


def leads_to_load(raw: str) -> int:
    """The run's size from `NURTURE_LOAD_LEADS`; a bad value stops the run with a one-line reason."""
    if not raw.isdigit() or int(raw) < DOMAINS:
        raise pytest.UsageError(
            f"NURTURE_LOAD_LEADS must be a whole number of at least {DOMAINS}, got {raw!r}"
        )
    return int(raw)


LEADS = leads_to_load(os.environ.get("NURTURE_LOAD_LEADS", "50000"))


@dataclass(frozen=True, slots=True)
class Caps:
    """Claims per clock hour: `hard` on d0 (a backlog is left after the day), `tight` on d1 (binds for the
    first hours), `generous` on every other domain (never reached)."""

    hard: int
    tight: int
    generous: int

    @classmethod
    def for_domain_size(cls, per_domain: int) -> Caps:
        return cls(hard=max(1, per_domain // 32), tight=max(1, per_domain // 8), generous=2 * per_domain)

    def setting(self) -> str:
        return f"d0.example={self.hard}/h, d1.example={self.tight}/h, *={self.generous}/h"

    def of(self, domain: str) -> int:
        return {"d0.example": self.hard, "d1.example": self.tight}.get(domain, self.generous)


@dataclass(slots=True)
class ConnectionWatcher:
    """Polls pg_stat_activity every 0.5 s for the database's backends other than the test's own."""

    db: Database
    name: str
    peak: int = 0
    _task: asyncio.Task[None] | None = field(default=None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :name AND application_name <> :checker"
        )
        while True:
            async with self.db.transaction() as conn:
                used = int((await conn.execute(query, {"name": self.name, "checker": CHECKER})).scalar_one())
            self.peak = max(self.peak, used)
            await asyncio.sleep(0.5)


def tag_connections(db: Database) -> None:
    """Name every connection `db` opens, outside any transaction so the pool's rollbacks keep the name."""

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.run_async(lambda raw: raw.execute(f"SET application_name = '{CHECKER}'"))

    event.listen(db.engine.sync_engine, "connect", on_connect)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 300)  # import, enrollment and the final checks come on top of the run
async def test_a_days_touches_for_100000_leads_across_20_domains_hold_the_invariants_and_the_caps(
    make_harness: MakeHarness, smtp_server: FaultSmtpServer, clean_pg: str
) -> None:
    # Given LEADS leads spread evenly over 20 domains, d0 and d1 capped so the caps bind, the rest generous
    per_domain = math.ceil(LEADS / DOMAINS)
    caps = Caps.for_domain_size(per_domain)
    harness = make_harness(domain_rate_limits=caps.setting())
    tag_connections(harness.db)
    started = time.monotonic()
    harness.import_leads(LEADS, domains=DOMAINS)
    imported_s = time.monotonic() - started
    sizes = {f"d{k}.example": len(range(k, LEADS, DOMAINS)) for k in range(DOMAINS)}
    watcher_db = Database(clean_pg)
    tag_connections(watcher_db)
    connections = ConnectionWatcher(watcher_db, str(make_url(clean_pg).database))
    connections.start()
    # ...a scheduler and two workers, and an SMTP server that answers at once
    services_started = time.time()  # the SMTP server stamps acceptances with time.time()
    harness.start("scheduler")
    harness.start("worker")
    harness.start("worker")
    try:
        # When simulated time moves through the day, one window at a time, each once it has done its work
        deadline = time.monotonic() + TIMEOUT_S
        for hour in range(DAY):
            await finish_window(harness, START + hour * WINDOW, caps, deadline)
        after_day = await domain_statuses(harness)
        # ...and on through the next day's windows until the hard-capped domain's backlog has gone too
        backlog_windows = math.ceil(sizes["d0.example"] / caps.hard) - DAY
        for hour in range(DAY, DAY + max(0, backlog_windows)):
            await finish_window(harness, START + hour * WINDOW, caps, deadline)
        sending_s = max(a.wall for a in smtp_server.snapshot()) - services_started
        cpu = ", ".join(f"{p.name} {cpu_seconds(p.popen.pid):.0f} s" for p in harness.processes)
    finally:
        await connections.stop()
        await watcher_db.aclose()

    # Then after the day every domain but d0 had all its touches sent; d0 sent its cap in each window and
    # the rest are still pending, due, for the next windows: not lost, not failed
    backlog = max(0, sizes["d0.example"] - DAY * caps.hard)
    for domain, size in sizes.items():
        expected = {"sent": size} if domain != "d0.example" else {"sent": size - backlog, "pending": backlog}
        assert after_day.get(domain) == Counter({k: v for k, v in expected.items() if v}), (domain, after_day)
    # ...no clock window got more sends of a domain than its cap, and the hard and tight caps did bind
    per_window = await sends_per_window(harness)
    over = {key: n for key, n in per_window.items() if n > caps.of(key[0])}
    assert not over, f"caps exceeded: {over}"
    hard_windows = [n for (domain, _), n in sorted(per_window.items()) if domain == "d0.example"]
    assert all(n == caps.hard for n in hard_windows[:-1]), hard_windows  # the last may hold a remainder
    tight_first = per_window[("d1.example", START)]
    assert tight_first == min(caps.tight, sizes["d1.example"])
    # ...and once the backlog went out too, I1-I4 hold over every delivery
    summary = await check_invariants(harness.db, smtp_server, name="load", faults=0, due_before=harness.now)
    assert summary.deliveries == LEADS
    assert await harness.count("sent") == LEADS == len(smtp_server.accepted)
    print(
        f"[load] {LEADS} leads over {DOMAINS} domains, caps {caps.setting()}: {LEADS} sent in "
        f"{sending_s:.1f} s = {LEADS / sending_s:.0f} sends/s (scheduler + 2 workers, from their start to "
        f"the last acceptance; import {imported_s:.1f} s before), {DAY + max(0, backlog_windows)} hourly "
        f"windows, d0 backlog after the day {backlog}, peak database connections {connections.peak}; "
        f"CPU: {cpu}, this process (SMTP server and checks) {time.process_time():.0f} s"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process so far (Linux /proc), to show where a run's time went."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def finish_window(harness: Harness, at: datetime, caps: Caps, deadline: float) -> None:
    """Set the clock to `at` and wait until the window has done all it may: every lead enrolled, nothing
    claimed or mid-send, and every domain with due work left at its cap for this window."""
    harness.set_clock(at)
    while not await window_done(harness, at, caps):
        if time.monotonic() > deadline or not all(p.alive for p in harness.processes):
            logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in harness.processes)
            raise AssertionError(
                f"window {at.isoformat()} did not finish: {await domain_statuses(harness)}\n{logs}"
            )
        await asyncio.sleep(0.2)


async def window_done(harness: Harness, at: datetime, caps: Caps) -> bool:
    # The counts first: once they show a domain at its cap, the claims behind them are committed and the
    # statuses read next see them.
    used = {
        row.domain: int(row.claimed)
        for row in await harness.rows(
            "SELECT domain, claimed FROM domain_send_windows WHERE window_start = :at", at=at
        )
    }
    rows = await harness.rows(
        "SELECT recipient_domain, count(*) FILTER (WHERE status IN ('claimed', 'sending')) AS busy, "
        "count(*) FILTER (WHERE status = 'pending' AND due_at <= :at) AS due, count(*) AS total "
        "FROM deliveries GROUP BY recipient_domain",
        at=at,
    )
    if sum(int(r.total) for r in rows) < LEADS or any(r.busy for r in rows):
        return False
    return all(used.get(r.recipient_domain, 0) >= caps.of(r.recipient_domain) for r in rows if r.due)


async def domain_statuses(harness: Harness) -> dict[str, Counter[str]]:
    found: dict[str, Counter[str]] = {}
    for row in await harness.rows(
        "SELECT recipient_domain, status, count(*) AS n FROM deliveries GROUP BY recipient_domain, status"
    ):
        found.setdefault(row.recipient_domain, Counter())[row.status] = int(row.n)
    return found


async def sends_per_window(harness: Harness) -> dict[tuple[str, datetime], int]:
    """Sent deliveries per domain and clock hour of their (simulated) send time."""
    counts: Counter[tuple[str, datetime]] = Counter()
    for row in await harness.rows("SELECT recipient_domain, sent_at FROM deliveries WHERE status = 'sent'"):
        hour = row.sent_at.replace(minute=0, second=0, microsecond=0)
        counts[(row.recipient_domain, hour)] += 1
    return dict(counts)
