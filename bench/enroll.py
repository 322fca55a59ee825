"""Benchmark: enrolling newly imported leads, as one scheduler pass does it.

Each run, on a fresh database (PostgreSQL `bench_enroll_<pid>`, and with --sqlite a SQLite file), inserts N
leads (default 100,000) with one INSERT ... SELECT, every one `nurturable` and flagged for an enrollment
check, spread over 8 time zones and 50 mail domains, and times `flows.tick.enroll`: choose a campaign for
each lead, insert the enrollments, plan and insert every delivery (7 per lead for `saas-nurture`), and
append an `enrolled` touchpoint each. It checks that every lead was enrolled and planned.

    .venv/bin/python bench/enroll.py [--leads 100000] [--runs 3] [--sqlite]
    .venv/bin/python bench/enroll.py --smoke       # CI size: 2,000 leads, 1 run, both databases

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import ROOT, create_pg_database, create_sqlite_database, drop_pg_database, summary
from sqlalchemy import text

from nurture.catalog import Catalog, load_catalog
from nurture.db.engine import Database
from nurture.db.queries.enrollment import DELIVERY_COLUMNS
from nurture.flows.tick import enroll

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
MAX_LEADS = 2_000_000  # every load is bounded
ZONES = (
    "Asia/Taipei",
    "Asia/Tokyo",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Australia/Sydney",
)


async def fill(db: Database, leads: int) -> None:
    zones = "ARRAY[" + ", ".join(f"'{z}'" for z in ZONES) + "]"
    if db.is_sqlite:
        zone = "CASE g % 8 " + " ".join(f"WHEN {i} THEN '{z}'" for i, z in enumerate(ZONES)) + " END"
        series = "WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < :n) SELECT"
        source = "FROM s"
        now = "'2026-03-02 02:00:00.000000'"
        tags, false_, true_ = "'{}'", "0", "1"
    else:
        zone = f"({zones})[g % 8 + 1]"
        series, source = "SELECT", "FROM generate_series(1, :n) g"
        now, tags, false_, true_ = "TIMESTAMPTZ '2026-03-02 02:00:00+00'", "'{}'::jsonb", "false", "true"
    sql = (
        "INSERT INTO leads (email, grade, stage, score, tags, suppressed, enroll_pending, timezone, "
        f"created_at, updated_at) {series} 'lead' || g || '@d' || (g % 50) || '.example', 'nurturable', "
        f"'lead', 0, {tags}, {false_}, {true_}, {zone}, {now}, {now} {source}"
    )
    async with db.transaction() as conn:
        await conn.execute(text(sql), {"n": leads})


async def one_run(url: str, catalog: Catalog, leads: int) -> tuple[float, float | None]:
    """Seconds to enroll, and on PostgreSQL the seconds of the ceiling: a bare COPY of the same deliveries."""
    db = Database(url)
    try:
        await fill(db, leads)
        started = time.perf_counter()
        enrolled = await enroll(db, catalog, NOW)
        seconds = time.perf_counter() - started
        async with db.transaction() as conn:
            planned = (await conn.execute(text("SELECT count(*) FROM deliveries"))).scalar_one()
        ceiling = None if db.is_sqlite else await copy_deliveries_alone(db)
    finally:
        await db.aclose()
    steps = len(catalog.campaigns["saas-nurture"].steps)
    if enrolled != leads or planned != leads * steps:
        raise RuntimeError(
            f"expected {leads} enrollments and {leads * steps} deliveries, got {enrolled}, {planned}"
        )
    return seconds, ceiling


async def copy_deliveries_alone(db: Database) -> float:
    """Seconds for one COPY of the planned delivery rows into an empty table shaped like `deliveries` (its
    indexes and defaults, no foreign keys): the write enrolling cannot go below."""
    async with db.transaction() as conn:
        await conn.execute(
            text("CREATE TABLE ceiling (LIKE deliveries INCLUDING DEFAULTS INCLUDING INDEXES)")
        )
        planned = await conn.execute(text(f"SELECT {', '.join(DELIVERY_COLUMNS)} FROM deliveries"))
        rows = [tuple(r) for r in planned.all()]
    async with db.transaction() as conn:
        raw = await conn.get_raw_connection()
        started = time.perf_counter()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "ceiling", records=rows, columns=DELIVERY_COLUMNS
        )
        return time.perf_counter() - started


async def run_postgresql(catalog: Catalog, leads: int) -> tuple[float, float | None]:
    name = f"bench_enroll_{os.getpid()}"
    url = await create_pg_database(name)
    try:
        return await one_run(url, catalog, leads)
    finally:
        await drop_pg_database(name)


async def run_sqlite(catalog: Catalog, leads: int, folder: Path) -> float:
    path = folder / "enroll.db"
    url = await create_sqlite_database(path)
    try:
        return (await one_run(url, catalog, leads))[0]
    finally:
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


async def main_async(args: argparse.Namespace) -> None:
    catalog = load_catalog(
        campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
    )
    print(f"enroll: {args.leads:,} new leads, {args.runs} runs")
    figures: dict[str, list[float]] = {"postgresql": [], "sqlite": [], "ceiling": [], "ratio": []}
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
        for number in range(1, args.runs + 1):
            pg, ceiling = await run_postgresql(catalog, args.leads)
            figures["postgresql"].append(pg)
            line = f"run {number}: postgresql {pg:.2f} s ({args.leads / pg:,.0f} leads/s)"
            if ceiling is not None:
                figures["ceiling"].append(ceiling)
                figures["ratio"].append(ceiling / pg)
                line += f", bare COPY of its deliveries {ceiling:.2f} s (ratio {ceiling / pg:.2f})"
            if args.sqlite:
                lite = await run_sqlite(catalog, args.leads, Path(tmp))
                figures["sqlite"].append(lite)
                line += f"  sqlite {lite:.2f} s ({args.leads / lite:,.0f} leads/s)"
            print(line, flush=True)
    print()
    for label in ("postgresql", "sqlite"):
        if figures[label]:
            print(summary(f"enroll {args.leads:,} leads, {label}", figures[label], "s", digits=2))
    if figures["ceiling"]:
        print(summary("bare COPY of the same deliveries (ceiling)", figures["ceiling"], "s", digits=2))
        print(summary("ceiling / enroll", figures["ratio"], "", digits=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=100_000, help="new leads to enroll (default 100000)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions; the median is reported (default 3)")
    parser.add_argument("--sqlite", action="store_true", help="also SQLite")
    parser.add_argument("--smoke", action="store_true", help="CI size: 2,000 leads, 1 run, both databases")
    args = parser.parse_args()
    if args.smoke:
        args.leads, args.runs, args.sqlite = 2000, 1, True
    if not 1 <= args.leads <= MAX_LEADS or args.runs < 1:
        parser.error(f"--leads must be between 1 and {MAX_LEADS:,} and --runs positive")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
