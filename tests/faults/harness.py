"""The fault harness: a campaign whose one-day sequence is due at once, leads spread over recipient domains,
`nurture worker` / `nurture scheduler` processes on a shared simulated clock, and waits on database rows.

Tests drive the service only from outside: they write the clock file, start, kill and signal processes, break
Redis, PostgreSQL or the SMTP server, and read the database rows and what the SMTP server kept.
"""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from nurture.clock import FileClock
from nurture.db.engine import Database
from tests.harness.cli import nurture_env

SECRET = "fault-suite-secret-key-0123456789"
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, inside every window used here
FINAL = ("sent", "failed", "bounced", "skipped", "cancelled", "unknown")

CAMPAIGN = """\
id: {id}
name: Fault suite {id}
priority: {priority}
audience:
  grade: [nurturable]
  stage: [lead, suspect]
  sources: [{sources}]
sender:
  from: "Acme Flow <growth@acmeflow.example>"
  postal_address: "Acme Flow Inc., 548 Market St #4100, San Francisco, CA 94104, USA"
send_window:
  days: [{days}]
  start: "{start}"
  end: "{end}"
  timezone: UTC
{late}steps:
{steps}
"""
STEP = """\
  - id: {id}
    day: {day}
    subject: "Hello {{{{ lead.first_name or 'there' }}}}, step {id}"
    template: faults/{template}
"""
TEMPLATE = """\
<p>Hello {{ lead.first_name or 'there' }}, a short note from {{ campaign.name }}.</p>
<p><a href="https://acmeflow.example/guide">The guide</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ postal_address }}</p>
"""
# Renders for validation's sample lead, fails at render for every real lead it is sent to (they are tagged).
POISON = """\
<p>Hello {{ 1 // 0 if lead.tags.get('source') == 'poison' else lead.first_name }}</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ postal_address }}</p>
"""


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    id: str = "faults"
    priority: int = 10
    steps: tuple[tuple[str, int], ...] = (("hello", 0),)  # (step id, day)
    days: str = "mon, tue, wed, thu, fri, sat, sun"
    start: str = "00:00"
    end: str = "23:59"
    poison_steps: frozenset[str] = frozenset()  # these steps use a template that never renders
    sources: str = "web"  # leads whose `source` tag is one of these (comma separated)
    skip_late_after_hours: int | None = None  # the campaign's stated rule for touches found late


def write_catalog(root: Path, campaigns: tuple[CampaignSpec, ...]) -> tuple[Path, Path]:
    """Write campaign files and their templates under `root`; return (campaigns dir, templates dir)."""
    campaigns_dir, templates_dir = root / "campaigns", root / "templates"
    (templates_dir / "faults").mkdir(parents=True, exist_ok=True)
    campaigns_dir.mkdir(parents=True, exist_ok=True)
    (templates_dir / "faults" / "note.html.j2").write_text(TEMPLATE, encoding="utf-8")
    (templates_dir / "faults" / "poison.html.j2").write_text(POISON, encoding="utf-8")
    for spec in campaigns:
        steps = "".join(
            STEP.format(
                id=step, day=day, template="poison.html.j2" if step in spec.poison_steps else "note.html.j2"
            )
            for step, day in spec.steps
        )
        body = CAMPAIGN.format(
            id=spec.id,
            priority=spec.priority,
            sources=spec.sources,
            late=f"late:\n  skip_after_hours: {spec.skip_late_after_hours}\n"
            if spec.skip_late_after_hours
            else "",
            days=spec.days,
            start=spec.start,
            end=spec.end,
            steps=steps,
        )
        (campaigns_dir / f"{spec.id}.yaml").write_text(body, encoding="utf-8")
    return campaigns_dir, templates_dir


def lead_address(index: int, domains: int) -> str:
    return f"lead{index:05d}@d{index % domains}.example"


def write_leads(
    path: Path, count: int, *, domains: int, source: Callable[[int], str] | None = None
) -> list[str]:
    """A CSV of `count` nurturable leads in UTC, spread round-robin over `domains` recipient domains, each
    tagged `source` (by index) when given, so campaign audiences can pick some of them."""
    addresses = [lead_address(i, domains) for i in range(count)]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "first_name", "company", "timezone", "grade", "stage", "source"])
        for i, address in enumerate(addresses):
            tag = source(i) if source is not None else "web"
            writer.writerow([address, f"Lead{i}", f"Company {i % 37}", "UTC", "nurturable", "lead", tag])
    return addresses


class Process:
    """One `nurture <command>` subprocess with its log file."""

    def __init__(self, name: str, command: str, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "nurture", command],
            env=env,
            cwd=workdir,
            stdout=self._log,
            stderr=self._log,
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        if self.alive:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self.close()

    def close(self) -> None:
        self._log.close()

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait for a clean exit; return the exit code."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        finally:
            self.kill9()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@dataclass(slots=True)
class Harness:
    """Environment and processes for one fault test; `close()` kills whatever is still running."""

    workdir: Path
    env: dict[str, str]
    db: Database
    clock_file: Path
    now: datetime = START
    processes: list[Process] = field(default_factory=list)
    faults: int = 0  # faults injected, for the summary line

    @classmethod
    def create(
        cls,
        workdir: Path,
        *,
        database_url: str,
        redis_url: str,
        smtp_url: str,
        campaigns: tuple[CampaignSpec, ...] = (CampaignSpec(),),
        check_url: str | None = None,
        **settings: str,
    ) -> Harness:
        campaigns_dir, templates_dir = write_catalog(workdir, campaigns)
        clock_file = workdir / "clock"
        FileClock.write(clock_file, START)
        env = nurture_env(  # the project's reps and scoring, this run's own campaigns and templates
            workdir / "var",
            NURTURE_DATABASE_URL=database_url,
            NURTURE_REDIS_URL=redis_url,
            NURTURE_SMTP_URL=smtp_url,
            NURTURE_SECRET_KEY=SECRET,
            NURTURE_CLOCK_FILE=str(clock_file),
            NURTURE_CAMPAIGNS_DIR=str(campaigns_dir),
            NURTURE_TEMPLATES_DIR=str(templates_dir),
            NURTURE_LOG_LEVEL="INFO",
            NURTURE_TICK_INTERVAL_S="0.2",
            NURTURE_CLAIM_LEASE_S="120",
            NURTURE_SMTP_TIMEOUT_S="2",
            NURTURE_MAX_SEND_ATTEMPTS="3",
            NURTURE_WORKER_THREADS="8",
        )
        env.update({f"NURTURE_{k.upper()}": v for k, v in settings.items()})
        # The test reads the database directly, never through a proxy it may be cutting.
        return cls(workdir=workdir, env=env, db=Database(check_url or database_url), clock_file=clock_file)

    def start(self, command: str, name: str | None = None, **overrides: str) -> Process:
        env = dict(self.env)
        env.update({f"NURTURE_{k.upper()}": v for k, v in overrides.items()})
        process = Process(name or f"{command}{len(self.processes)}", command, env, self.workdir)
        self.processes.append(process)
        return process

    def import_leads(
        self, count: int, *, domains: int = 4, source: Callable[[int], str] | None = None
    ) -> list[str]:
        path = self.workdir / "leads.csv"
        addresses = write_leads(path, count, domains=domains, source=source)
        result = subprocess.run(
            [sys.executable, "-m", "nurture", "leads", "import", str(path)],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return addresses

    def set_clock(self, at: datetime) -> None:
        self.now = at
        FileClock.write(self.clock_file, at)

    def advance(self, by: timedelta) -> None:
        self.set_clock(self.now + by)

    async def close(self) -> None:
        for process in self.processes:
            process.kill9()
        await self.db.aclose()

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.db.transaction() as conn:
            return (await conn.execute(text(sql), params)).scalar()

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.db.transaction() as conn:
            return list((await conn.execute(text(sql), params)).all())

    async def statuses(self) -> dict[str, int]:
        rows = await self.rows("SELECT status, count(*) FROM deliveries GROUP BY status")
        return {row[0]: int(row[1]) for row in rows}

    async def wait_for(
        self,
        what: str,
        condition: Callable[[], Awaitable[bool]],
        *,
        timeout_s: float = 60,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Poll `condition` (calling `tick` between polls, e.g. to move the clock) until it holds."""
        deadline = time.monotonic() + timeout_s
        while not await condition():
            if time.monotonic() > deadline:
                raise AssertionError(await self._stuck(what))
            if tick is not None:
                tick()
            await asyncio.sleep(0.1)

    async def wait_settled(
        self, deliveries: int, *, timeout_s: float = 60, step: timedelta = timedelta(minutes=5)
    ) -> None:
        """Move simulated time on until `deliveries` exist and none is open: pending, claimed or sending.

        Time jumps to the next due instant only when nothing due is waiting, as for a service that keeps up
        with its work (a clock racing past a send in progress would make it look abandoned). It creeps on by
        `step` only when nothing has moved for a while: what is left then waits on time itself (a claim whose
        broker message was lost, a send whose worker died, a backoff).
        """
        deadline = time.monotonic() + timeout_s
        last: dict[str, int] = {}
        unchanged = 0
        while True:
            counts = await self.statuses()
            unchanged = unchanged + 1 if counts == last else 0
            last = counts
            in_flight = counts.get("claimed", 0) + counts.get("sending", 0)
            if sum(counts.values()) >= deliveries and in_flight + counts.get("pending", 0) == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(await self._stuck("every delivery to settle"))
            next_due = await self.scalar("SELECT min(due_at) FROM deliveries WHERE status = 'pending'")
            if counts and in_flight == 0 and next_due is not None and next_due > self.now:
                self.set_clock(next_due)
            elif counts and ((counts.get("sending", 0) == 0 and unchanged >= 20) or unchanged >= 100):
                self.advance(step)
                unchanged = 0
            await asyncio.sleep(0.1)

    async def _stuck(self, what: str) -> str:
        logs = "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in self.processes)
        return f"timed out waiting for {what}; deliveries {await self.statuses()}\n{logs}"

    async def count(self, status: str) -> int:
        return int(await self.scalar("SELECT count(*) FROM deliveries WHERE status = :s", s=status))


async def truncate_everything(db: Database) -> None:
    """Empty every table of the schema (whatever tables the migrations have added), keeping the schema."""
    async with db.transaction() as conn:
        names = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            )
        ).scalars()
        listed = ", ".join(f'"{name}"' for name in names)
        if listed:
            await conn.exec_driver_sql(f"TRUNCATE {listed} RESTART IDENTITY CASCADE")
