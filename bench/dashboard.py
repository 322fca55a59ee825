"""Benchmark: `nurture report` and the dashboard page on 100,000 leads, PostgreSQL and SQLite.

Seeds a fresh database with a history shaped like three weeks of nurturing: every lead created over 30 days
with a source tag and an owner; 90% enrolled in a campaign of 7 steps, 3 of them sent (2% of first emails
bounce); opens on a third of the sends and clicks on a seventh, a tenth of them flagged as machines; an
eighth of the leads crossed MQL (stage change, exit as qualified, an alert) and a few were imported as SQL
or customers. Then it times, each `--runs` times: the full report (`build_report`, grouped by source, as
the dashboard and `nurture report` ask for it), and `GET /dashboard` through the ASGI app (signed in with an
API key, server-side time without a network), and prints the medians.

    .venv/bin/python bench/dashboard.py [--leads 100000] [--runs 3] [--sqlite-only | --postgres-only]

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from common import (
    ROOT,
    add_runs_option,
    create_pg_database,
    create_sqlite_database,
    drop_pg_database,
    summary,
)
from sqlalchemy import Table

from nurture.clock import FrozenClock
from nurture.db.engine import Database
from nurture.db.queries.report import GroupBy, Scope
from nurture.db.queries.tables import alerts, deliveries, enrollments, events, leads, touchpoints
from nurture.flows.report import build_report
from nurture.runtime import build_runtime
from nurture.settings import Settings
from nurture.web.app import create_app
from nurture.web.auth import issue_api_key

START = datetime(2026, 1, 5, 1, 0, tzinfo=UTC)
NOW = START + timedelta(days=31)
STEPS = ("welcome", "ops-checklist", "case-study", "roi-calculator")
SOURCES = ("webinar", "google", "linkedin", "tbbanner", "partner", None)
OWNERS = ("lin.chen@acmeflow.example", "katrin.vogel@acmeflow.example", None)
CHUNK = 5000


def _rows(n: int) -> Iterator[tuple[Table, dict[str, Any]]]:
    """The history of lead `n` (ids are given, so the rows reference each other without a read)."""
    created = START + timedelta(days=n % 30, minutes=n % 600)
    source = SOURCES[n % len(SOURCES)]
    stage = "sql" if n % 97 == 0 else "customer" if n % 211 == 0 else "lead"
    tags = {"source": source} if source else ({"utm_source": "newsletter"} if n % 2 else {})
    yield (
        leads,
        {
            "id": n,
            "email": f"lead{n}@bench{n % 20}.example",
            "first_name": f"Lead {n}",
            "company": f"Co {n % 900}",
            "stage": stage,
            "score": n % 60,
            "tags": tags,
            "owner": OWNERS[n % 3],
            "grade": "nurturable",
            "created_at": created,
            "updated_at": created,
            "enroll_pending": False,
        },
    )
    if n % 10 == 0:
        return
    yield (
        enrollments,
        {
            "id": n,
            "lead_id": n,
            "campaign_id": "saas-nurture",
            "campaign_hash": "bench",
            "state": "active",
            "enrolled_at": created,
        },
    )
    for index, step in enumerate(STEPS):
        delivery_id = n * 10 + index
        at = created + timedelta(days=2 * index)
        sent = index < 3
        bounced = index == 0 and n % 50 == 1
        status = ("failed" if bounced else "sent") if sent else "pending"
        yield (
            deliveries,
            {
                "id": delivery_id,
                "enrollment_id": n,
                "lead_id": n,
                "campaign_id": "saas-nurture",
                "step_id": step,
                "step_index": index,
                "due_at": at,
                "status": status,
                "sent_at": at if status == "sent" else None,
            },
        )
        if not sent:
            continue
        kind, detail = (
            ("email_failed", {"error": "SMTP 550: 5.1.1 no such user"}) if bounced else ("email_sent", {})
        )
        yield touchpoints, _tp(n, kind, at, step, delivery_id, detail)
        if bounced:
            return
        for event_type, every in (("email_open", 3), ("email_click", 7)):
            if delivery_id % every == 0:
                machine = n % 10 == 3
                yield (
                    events,
                    {
                        "lead_id": n,
                        "type": event_type,
                        "occurred_at": at + timedelta(hours=3),
                        "received_at": at,
                        "delivery_id": delivery_id,
                        "properties": {"machine": True} if machine else {},
                    },
                )
                yield touchpoints, _tp(n, event_type, at + timedelta(hours=3), step, delivery_id, {})
    if n % 8 == 0:
        crossed = created + timedelta(days=3 + n % 9, hours=1)
        change = {"before": "lead", "after": "mql", "reason": "qualified: score 55 >= 50"}
        yield touchpoints, _tp(n, "stage_change", crossed, None, None, change)
        yield touchpoints, {**_tp(n, "exited", crossed, None, None, {"reason": "qualified"}), "step_id": None}
        yield (
            alerts,
            {
                "lead_id": n,
                "trigger": "mql",
                "reason": "score crossed mql (50): 40 -> 55",
                "score_before": 40,
                "score_after": 55,
                "owner": OWNERS[n % 3],
                "status": "delivered",
                "created_at": crossed,
                "detail": {},
            },
        )


def _tp(
    n: int, kind: str, at: datetime, step: str | None, delivery_id: int | None, detail: dict[str, Any]
) -> dict[str, Any]:
    return {
        "lead_id": n,
        "kind": kind,
        "occurred_at": at,
        "campaign_id": "saas-nurture",
        "step_id": step,
        "delivery_id": delivery_id,
        "message_id": None,
        "detail": detail,
    }


async def seed(db: Database, count: int) -> None:
    order = (leads, enrollments, deliveries, events, touchpoints, alerts)
    pending: dict[Table, list[dict[str, Any]]] = {table: [] for table in order}

    async def flush(tables: tuple[Table, ...]) -> None:
        async with db.transaction() as conn:
            for table in tables:
                if pending[table]:
                    await conn.execute(table.insert(), pending[table])
                    pending[table] = []

    for n in range(1, count + 1):
        for table, row in _rows(n):
            pending[table].append(row)
        if n % CHUNK == 0:
            await flush(order)
    await flush(order)
    if not db.is_sqlite:
        async with db.transaction() as conn:
            from sqlalchemy import text

            await conn.execute(text("ANALYZE"))


async def measure(url: str, label: str, count: int, runs: int) -> None:
    db = Database(url)
    began = time.perf_counter()
    await seed(db, count)
    print(f"{label}: seeded {count:,} leads in {time.perf_counter() - began:.1f} s")
    report_times = []
    for _ in range(runs):
        began = time.perf_counter()
        await build_report(db, scope=Scope(), by=GroupBy.source)
        report_times.append(1000 * (time.perf_counter() - began))
    await db.aclose()
    print(summary(f"{label} report (by source)", report_times, "ms"))
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate(
            {
                "database_url": url,
                "data_dir": Path(tmp),
                "campaigns_dir": ROOT / "campaigns",
                "templates_dir": ROOT / "templates",
                "reps_file": ROOT / "reps.yaml",
                "secret_key": "bench-secret-key-0123456789",
                "log_level": "WARNING",
            }
        )
        clock = FrozenClock(NOW)
        runtime = build_runtime(settings, clock=clock)
        key = (await issue_api_key(runtime.db, name="bench", now=NOW)).key
        transport = httpx.ASGITransport(app=create_app(runtime))
        headers = {"authorization": f"Bearer {key}", "accept": "text/html"}
        cold: list[float] = []
        warm: list[float] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            for _ in range(runs):
                clock.advance(timedelta(minutes=2))
                for times in (cold, warm):  # the report computed, then served from the minute's cache
                    began = time.perf_counter()
                    response = await client.get("/dashboard?days=30", headers=headers)
                    times.append(1000 * (time.perf_counter() - began))
                    response.raise_for_status()
        await runtime.aclose()
    print(
        summary(f"{label} GET /dashboard, report computed", cold, "ms"), f"[{len(response.content):,} bytes]"
    )
    print(summary(f"{label} GET /dashboard, report cached", warm, "ms"))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--postgres-only", action="store_true")
    add_runs_option(parser)
    args = parser.parse_args()
    if not args.sqlite_only:
        name = "nurture_bench_dashboard"
        url = await create_pg_database(name)
        try:
            await measure(url, "PostgreSQL", args.leads, args.runs)
        finally:
            await drop_pg_database(name)
    if not args.postgres_only:
        with tempfile.TemporaryDirectory() as tmp:
            url = await create_sqlite_database(Path(tmp) / "bench.db")
            await measure(url, "SQLite", args.leads, args.runs)


if __name__ == "__main__":
    asyncio.run(main())
