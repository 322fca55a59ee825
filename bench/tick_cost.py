"""Benchmark: the cost of one scheduler pass as the number of enrollments grows, with the same due work.

For each size (default 10,000 / 100,000 / 1,000,000 enrollments) a fresh PostgreSQL database
(`bench_tick_cost_<pid>`) is filled with generate_series, one INSERT ... SELECT per table: every lead is
enrolled in `saas-nurture`, its day-0 delivery is sent, its next two steps are pending, and --due of them
(default 1,000) fell due a minute ago; the others fall due over the next 20 days. Then, --runs times:

1. `Scheduler.tick(now)` as `nurture tick` runs it: enroll (nothing is flagged), mark stale sends, claim
   the due deliveries in one batch and enqueue them (the embedded broker, or with --redis a Redis broker on
   db 14), and look for stalled alerts and lost re-scores; timed as a whole;
2. the claimed deliveries are put back to `pending` and the queue emptied, for the next run.

It also prints EXPLAIN (ANALYZE, BUFFERS) of the due query: the rows and 8 KB pages it read.
The figures to compare are the medians per size: flat means the due work, not the table, sets the cost.

    .venv/bin/python bench/tick_cost.py [--sizes 10000,100000,1000000] [--due 1000] [--runs 3] [--redis]
                                        [--rate-limits "*=100000/h"]
    .venv/bin/python bench/tick_cost.py --smoke      # CI sizes: 1,000 and 5,000 enrollments, 100 due

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from common import ROOT, create_pg_database, drop_pg_database, summary
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import text

from nurture.catalog import load_catalog
from nurture.clock import FrozenClock
from nurture.flows.tick import enroll
from nurture.scheduler import Scheduler
from nurture.service import Service, open_service
from nurture.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/14"
SECRET = "bench-secret-key-0123456789abcdef"
CAMPAIGN = "saas-nurture"
NOW = datetime(2026, 3, 4, 2, 0, tzinfo=UTC)  # a Wednesday, 10:00 in Taipei
MAX_SIZE = 5_000_000  # every load is bounded

DUE_QUERY = """
EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
SELECT id FROM deliveries
WHERE status IN ('pending', 'claimed') AND due_at <= :now AND (status = 'pending' OR claimed_until <= :now)
ORDER BY due_at LIMIT :limit FOR UPDATE SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class SizeFigures:
    size: int
    build_s: float
    tick_ms: list[float]
    claimed: int
    due_query_ms: float
    rows_read: int
    pages_read: int


def build_settings(
    database_url: str, *, use_redis: bool, claim_batch: int, rate_limits: str, folder: Path
) -> Settings:
    return Settings.model_validate(
        {
            "database_url": database_url,
            "redis_url": REDIS_URL if use_redis else None,
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
            "scoring_file": ROOT / "scoring.yaml",
            "data_dir": folder / "var",
            "secret_key": SECRET,
            "claim_batch": claim_batch,
            "domain_rate_limits": rate_limits,
            "log_level": "WARNING",
        }
    )


async def fill(service: Service, size: int, due: int) -> float:
    """Fill the database with `size` enrolled leads, `due` of whose deliveries are due; return seconds."""
    db, catalog = service.runtime.db, service.runtime.catalog
    campaign = catalog.campaigns[CAMPAIGN]
    steps = [s.id for s in campaign.steps[:3]]
    started = time.perf_counter()
    await enroll(db, catalog, NOW)  # records the catalog's fingerprint, so no lead is flagged later
    params: dict[str, Any] = {"n": size, "due": due, "now": NOW, "hash": campaign.content_hash}
    statements = [
        "INSERT INTO leads (id, email, grade, stage, score, tags, suppressed, enroll_pending, timezone,"
        " created_at, updated_at) SELECT g, 'lead' || g || '@d' || (g % 50) || '.example', 'nurturable',"
        " 'lead', 0, '{}'::jsonb, false, false, 'Asia/Taipei', :now, :now FROM generate_series(1, :n) g",
        "INSERT INTO enrollments (id, lead_id, campaign_id, campaign_hash, state, enrolled_at)"
        f" SELECT g, g, '{CAMPAIGN}', :hash, 'active', :now - interval '3 days'"
        " FROM generate_series(1, :n) g",
        "INSERT INTO deliveries (enrollment_id, lead_id, campaign_id, step_id, step_index, recipient_domain,"
        " due_at, status, attempts, sent_at, message_id)"
        f" SELECT g, g, '{CAMPAIGN}', '{steps[0]}', 0, 'd' || (g % 50) || '.example',"
        " :now - interval '3 days', 'sent', 1, :now - interval '3 days', '<' || g || '@bench>'"
        " FROM generate_series(1, :n) g",
        "INSERT INTO deliveries (enrollment_id, lead_id, campaign_id, step_id, step_index, recipient_domain,"
        " due_at, status)"
        f" SELECT g, g, '{CAMPAIGN}', '{steps[1]}', 1, 'd' || (g % 50) || '.example',"
        " CASE WHEN g <= :due THEN :now - interval '1 minute'"
        " ELSE :now + (g % 20 + 1) * interval '1 day' END,"
        " 'pending' FROM generate_series(1, :n) g",
        "INSERT INTO deliveries (enrollment_id, lead_id, campaign_id, step_id, step_index, recipient_domain,"
        " due_at, status)"
        f" SELECT g, g, '{CAMPAIGN}', '{steps[2]}', 2, 'd' || (g % 50) || '.example',"
        " :now + (g % 20 + 21) * interval '1 day', 'pending' FROM generate_series(1, :n) g",
        "SELECT setval('leads_id_seq', :n)",
        "SELECT setval('enrollments_id_seq', :n)",
    ]
    async with db.transaction() as conn:
        for sql in statements:
            typed = sql.replace(":now", "CAST(:now AS timestamptz)")
            await conn.execute(text(typed), {k: v for k, v in params.items() if f":{k}" in sql})
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM ANALYZE"))
    return time.perf_counter() - started


async def explain_due(service: Service, limit: int) -> tuple[float, int, int]:
    """The due query's execution ms, rows read by its scan, and pages touched (rolled back after)."""
    async with service.runtime.db.engine.connect() as conn:
        transaction = await conn.begin()
        raw = (await conn.execute(text(DUE_QUERY), {"now": NOW, "limit": limit})).scalar_one()
        await transaction.rollback()
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    top = plan["Plan"]
    scan = top
    while scan.get("Plans"):
        scan = scan["Plans"][0]
    pages = int(top.get("Shared Hit Blocks", 0)) + int(top.get("Shared Read Blocks", 0))
    return float(plan["Execution Time"]), int(scan["Actual Rows"]), pages


async def reset(service: Service) -> None:
    async with service.runtime.db.transaction() as conn:
        await conn.execute(
            text("UPDATE deliveries SET status = 'pending', claimed_until = NULL WHERE status = 'claimed'")
        )
        await conn.execute(text("DELETE FROM domain_send_windows"))
    broker = service.actors.broker
    if isinstance(broker, StubBroker | RedisBroker):
        broker.flush_all()


async def measure(size: int, args: argparse.Namespace, folder: Path) -> SizeFigures:
    name = f"bench_tick_cost_{os.getpid()}"
    url = await create_pg_database(name)
    settings = build_settings(
        url, use_redis=args.redis, claim_batch=args.due, rate_limits=args.rate_limits, folder=folder
    )
    service = await open_service(settings, clock=FrozenClock(NOW))
    try:
        build_s = await fill(service, size, args.due)
        scheduler = Scheduler(service.runtime, service.actors)
        ticks: list[float] = []
        claimed = 0
        for _ in range(args.runs):
            started = time.perf_counter()
            result = await scheduler.tick(NOW)
            ticks.append((time.perf_counter() - started) * 1000)
            claimed = result.claimed
            if claimed != args.due:
                raise RuntimeError(f"{size:,} enrollments: claimed {claimed}, expected {args.due}")
            await reset(service)
        query_ms, rows, pages = await explain_due(service, args.due)
    finally:
        await service.runtime.aclose()
        if isinstance(service.actors.broker, RedisBroker):
            service.actors.broker.client.close()
        await drop_pg_database(name)
    return SizeFigures(size, build_s, ticks, claimed, query_ms, rows, pages)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="enrollments per data set")
    parser.add_argument("--due", type=int, default=1000, help="deliveries due at the tick (default 1000)")
    parser.add_argument("--runs", type=int, default=3, help="ticks per size; the median is reported")
    parser.add_argument("--redis", action="store_true", help=f"enqueue on Redis ({REDIS_URL}) instead")
    parser.add_argument(
        "--rate-limits",
        default="",
        help='NURTURE_DOMAIN_RATE_LIMITS, e.g. "*=100000/h": every domain capped, none full',
    )
    parser.add_argument("--smoke", action="store_true", help="CI sizes: 1,000 and 5,000 with 100 due")
    args = parser.parse_args()
    if args.smoke:
        args.sizes, args.due = "1000,5000", 100
    try:
        args.size_list = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if args.runs < 1 or args.due < 1 or any(not args.due <= s <= MAX_SIZE for s in args.size_list):
        parser.error(f"--runs and --due must be positive and every size between --due and {MAX_SIZE:,}")
    return args


async def main_async(args: argparse.Namespace) -> None:
    if args.redis:
        redis.Redis.from_url(REDIS_URL).flushdb()
    load_catalog(
        campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
    )
    broker = "Redis db 14" if args.redis else "the embedded broker"
    caps = f", rate limits {args.rate_limits!r}" if args.rate_limits else ""
    print(f"tick_cost: {args.due:,} due, claim + enqueue on {broker}{caps}, {args.runs} ticks per size")
    results: list[SizeFigures] = []
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
        for size in args.size_list:
            figures = await measure(size, args, Path(tmp))
            results.append(figures)
            ticks = ", ".join(f"{t:.1f}" for t in figures.tick_ms)
            print(
                f"{size:>10,} enrollments: built in {figures.build_s:.1f} s; tick ms: {ticks}; due query "
                f"{figures.due_query_ms:.2f} ms, {figures.rows_read:,} rows, {figures.pages_read:,} pages",
                flush=True,
            )
    print()
    for figures in results:
        print(summary(f"tick, {figures.size:,} enrollments", figures.tick_ms, "ms", digits=1))
    first, last = results[0], results[-1]
    ratio = statistics.median(last.tick_ms) / statistics.median(first.tick_ms)
    print(f"ratio {last.size:,} / {first.size:,}: {ratio:.2f} (goal: within 2x)")


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
