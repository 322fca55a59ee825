"""Benchmark: rows per second through `import_leads`, the path `nurture leads import` takes.

A synthetic CSV (columns as in examples/leads.csv, unique addresses, some non-Latin names) is written to a
temporary folder once. Each run then imports it into a fresh, migrated database: a PostgreSQL database
`bench_import_<pid>` created next to the admin database (and dropped after), and, unless --no-sqlite, a new
SQLite file. A third figure, CSV parsing plus row validation with no database, shows how much of the
time is spent before any SQL.

    .venv/bin/python bench/import_leads.py [--rows 100000] [--runs 3] [--no-sqlite] [--no-normalise]
                                           [--batch-size 0] [--smoke]

`--batch-size 0` (the default) uses the flow's own batch size, as the CLI does; `--smoke` is the CI size
(2,000 rows, one run). PostgreSQL comes from
NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from common import (
    add_runs_option,
    create_pg_database,
    create_sqlite_database,
    drop_pg_database,
    generate_leads,
    summary,
    write_csv,
)
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from nurture.core.lead import RowError, normalise_row
from nurture.csv_input import CsvRowError, lead_rows, open_csv
from nurture.db.engine import Database
from nurture.flows.ingest import import_leads

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ImportRun:
    seconds: float
    accepted: int
    rejected: int
    stored: int  # leads counted in the database afterwards

    def rows_per_s(self, rows: int) -> float:
        return rows / self.seconds


async def _timed_import(
    url: str, rows: Iterable[Mapping[str, str | None] | RowError], batch_size: int
) -> ImportRun:
    db = Database(url)
    try:
        async with db.transaction() as conn:  # connect before the clock starts
            await conn.execute(text("SELECT 1"))
        started = time.perf_counter()
        if batch_size:
            report = await import_leads(db, rows, now=NOW, batch_size=batch_size)
        else:
            report = await import_leads(db, rows, now=NOW)
        seconds = time.perf_counter() - started
        async with db.transaction() as conn:
            stored = (await conn.execute(text("SELECT count(*) FROM leads"))).scalar_one()
    finally:
        await db.aclose()
    return ImportRun(seconds, report.accepted, len(report.rejected), int(stored))


def import_file(url: str, path: Path, batch_size: int) -> ImportRun:
    # Opened as the CLI opens it (the whole-file check runs here); the rows stream inside the timed import.
    with open_csv(path) as source:
        try:
            return asyncio.run(_timed_import(url, lead_rows(source), batch_size))
        except SQLAlchemyError as exc:
            reason = str(exc.orig if isinstance(exc, DBAPIError) else exc).splitlines()[0]
            raise SystemExit(f"import failed on {url.partition(':')[0]}: {reason}") from None


def run_postgresql(path: Path, batch_size: int) -> ImportRun:
    name = f"bench_import_{os.getpid()}"
    url = asyncio.run(create_pg_database(name))
    try:
        return import_file(url, path, batch_size)
    finally:
        asyncio.run(drop_pg_database(name))


def run_sqlite(path: Path, folder: Path, batch_size: int) -> ImportRun:
    database = folder / "import.db"
    url = asyncio.run(create_sqlite_database(database))
    try:
        return import_file(url, path, batch_size)
    finally:
        for suffix in ("", "-wal", "-shm"):
            database.with_name(database.name + suffix).unlink(missing_ok=True)


def run_normalise_only(path: Path) -> float:
    """Seconds to check and parse the CSV (as the CLI reads it) and validate every row in the core, with no
    database."""
    started = time.perf_counter()
    with open_csv(path) as source:
        for item in source:
            if isinstance(item, CsvRowError) or isinstance(
                normalise_row(item.values, row_number=item.row), RowError
            ):
                raise RuntimeError(f"row {item.row} was rejected")
    return time.perf_counter() - started


def _check(run: ImportRun, rows: int, backend: str) -> None:
    if run.rejected or run.accepted != rows or run.stored != rows:
        raise RuntimeError(
            f"{backend}: expected {rows} leads, got accepted={run.accepted} rejected={run.rejected} "
            f"stored={run.stored}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="CSV rows to generate (default 100000)")
    add_runs_option(parser)
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True, help="also SQLite")
    parser.add_argument(
        "--normalise",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time CSV parsing + row validation alone",
    )
    parser.add_argument(
        "--batch-size", type=int, default=0, help="rows per upsert batch; 0 = the flow's default (2000)"
    )
    parser.add_argument("--smoke", action="store_true", help="CI size: 2,000 rows, 1 run")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.runs = 2000, 1
    if args.rows < 1 or args.runs < 1 or args.batch_size < 0:
        parser.error("--rows and --runs must be positive, --batch-size not negative")

    figures: dict[str, list[float]] = {"postgresql": [], "sqlite": [], "csv+validate (no database)": []}
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
        folder = Path(tmp)
        path = folder / "leads.csv"
        written = write_csv(path, generate_leads(args.rows))
        batch = args.batch_size or "the flow's default"
        size_mb = path.stat().st_size / 1e6
        print(f"import_leads: {written:,} rows, {size_mb:.1f} MB CSV, batch size {batch}, {args.runs} runs")
        for number in range(1, args.runs + 1):
            line = [f"run {number}:"]
            pg = run_postgresql(path, args.batch_size)
            _check(pg, written, "postgresql")
            figures["postgresql"].append(pg.rows_per_s(written))
            line.append(f"postgresql {pg.rows_per_s(written):,.0f} rows/s ({pg.seconds:.2f} s)")
            if args.sqlite:
                lite = run_sqlite(path, folder, args.batch_size)
                _check(lite, written, "sqlite")
                figures["sqlite"].append(lite.rows_per_s(written))
                line.append(f"sqlite {lite.rows_per_s(written):,.0f} rows/s ({lite.seconds:.2f} s)")
            if args.normalise:
                seconds = run_normalise_only(path)
                figures["csv+validate (no database)"].append(written / seconds)
                line.append(f"csv+validate {written / seconds:,.0f} rows/s ({seconds:.2f} s)")
            print("  ".join(line), flush=True)
    print()
    for label, values in figures.items():
        if values:
            print(summary(label, values, "rows/s"))


if __name__ == "__main__":
    main()
