"""Benchmark: keeping stored scores as of now on 100,000 leads, PostgreSQL: the scheduler's refresh of the
scores whose decay instant came, next to a set-based refresh of every stale score and to decaying at read.

Seeds leads rescored over the last 60 days (scores 0-90, unrounded points and the instant each score next
falls, as a rescore stores them), brings them to one instant, then times, each `--runs` times, one tick
interval (10 s) later:

- **refresh (index)**: `flows.decay.refresh_scores`, what the scheduler's pass runs: only the leads whose
  instant to fall has come, found by the `score_drops_at` index;
- **set-based UPDATE**: `UPDATE leads SET score = round(points * 0.5 ^ (age / half_life)) WHERE
  score_points_at < now - 10 s`, every stale score rewritten (what a refresh without the instant costs);
- **decay at read**: the decision queries computing the decayed score per row instead of reading it: the
  audience filter (`count(*) WHERE decayed <= 49`, every lead read) and the hot list ordered by it.

    .venv/bin/python bench/score_decay.py [--leads 100000] [--runs 3] [--smoke]

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common import add_runs_option, create_pg_database, drop_pg_database, summary
from sqlalchemy import text

from nurture.catalog import Catalog
from nurture.core.scoring import DEFAULT_RULES, next_drop_at, score_as_of
from nurture.db.engine import Database
from nurture.db.queries.tables import leads
from nurture.flows.decay import refresh_scores

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
TICK = timedelta(seconds=10)
HALF_LIFE = DEFAULT_RULES.half_life
CHUNK = 5000
AGE = "extract(epoch from (CAST(:now AS timestamptz) - score_points_at))"
DECAYED = f"round(score_points * power(0.5, {AGE} / :hl))"


def _lead(n: int, rng: random.Random) -> dict[str, Any]:
    at = NOW - timedelta(seconds=rng.randrange(60 * 86_400))
    points = rng.choice((0.0, rng.uniform(0, 90)))
    return {
        "email": f"lead{n}@bench.example",
        "grade": "nurturable",
        "stage": "lead",
        "score": score_as_of(points, at, at, HALF_LIFE),
        "score_points": points,
        "score_points_at": at,
        "score_updated_at": at,
        "score_drops_at": next_drop_at(points, at, at, HALF_LIFE),
        "tags": {},
        "suppressed": False,
        "enroll_pending": False,
        "created_at": at,
        "updated_at": at,
    }


async def seed(db: Database, count: int) -> None:
    rng = random.Random(7)
    for start in range(0, count, CHUNK):
        rows = [_lead(n, rng) for n in range(start, min(count, start + CHUNK))]
        async with db.transaction() as conn:
            await conn.execute(leads.insert(), rows)
    async with db.transaction() as conn:
        await conn.execute(text("ANALYZE leads"))


async def _timed(db: Database, sql: str, params: dict[str, Any]) -> tuple[float, int]:
    async with db.transaction() as conn:
        began = time.perf_counter()
        result = await conn.execute(text(sql), params)
        rows = result.rowcount if result.returns_rows is False else len(result.all())
        return 1000 * (time.perf_counter() - began), rows


async def measure(url: str, count: int, runs: int) -> None:
    db = Database(url)
    catalog = Catalog(MappingProxyType({}), MappingProxyType({}), Path("templates"))
    began = time.perf_counter()
    await seed(db, count)
    print(f"PostgreSQL: seeded {count:,} leads in {time.perf_counter() - began:.1f} s")
    began = time.perf_counter()
    caught_up = await refresh_scores(db, catalog, NOW)
    print(f"first refresh after seeding: {caught_up:,} leads in {time.perf_counter() - began:.2f} s")
    refresh, changed, update, updated, audience, hot = [], [], [], [], [], []
    now = NOW
    hl = HALF_LIFE.total_seconds()
    for _ in range(runs):
        now += TICK
        began = time.perf_counter()
        changed.append(await refresh_scores(db, catalog, now))
        refresh.append(1000 * (time.perf_counter() - began))
        ms, rows = await _timed(
            db,
            f"UPDATE leads SET score = {DECAYED} WHERE score_points_at < CAST(:stale AS timestamptz)",
            {"now": now, "hl": hl, "stale": now - TICK},
        )
        update.append(ms)
        updated.append(rows)
        ms, _ = await _timed(
            db, f"SELECT count(*) FROM leads WHERE stage = 'lead' AND {DECAYED} <= 49", {"now": now, "hl": hl}
        )
        audience.append(ms)
        ms, _ = await _timed(
            db, f"SELECT id FROM leads ORDER BY {DECAYED} DESC LIMIT 20", {"now": now, "hl": hl}
        )
        hot.append(ms)
    await db.aclose()
    print(summary("refresh (index), one tick", refresh, "ms", digits=1), f"[leads changed: {changed}]")
    print(summary("set-based UPDATE of stale scores", update, "ms", digits=1), f"[rows: {updated}]")
    print(summary("decay at read: audience filter", audience, "ms", digits=1))
    print(summary("decay at read: hot list top 20", hot, "ms", digits=1))


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--smoke", action="store_true", help="2,000 leads, one run")
    add_runs_option(parser)
    args = parser.parse_args()
    count, runs = (2_000, 1) if args.smoke else (args.leads, args.runs)
    name = "nurture_bench_score_decay"
    url = await create_pg_database(name)
    try:
        await measure(url, count, runs)
    finally:
        await drop_pg_database(name)


if __name__ == "__main__":
    asyncio.run(main())
