"""Benchmark: emails per second from one scheduler pass plus a drain, into a local SMTP server.

Each run, on a fresh database (PostgreSQL `bench_tick_<pid>`, or a SQLite file with --sqlite):

1. imports N leads, all grade `nurturable`, stage `lead`, in time zones whose send window is open at --now;
2. runs ONE scheduler pass at --now, as `Scheduler.tick` does it, timed in two parts:
   (a) enroll: every lead is enrolled and its deliveries planned;
   (b) dispatch + enqueue: the N day-0 deliveries are claimed and handed to the broker;
3. (c) drains the queue with in-process worker threads, as `nurture tick --drain` does (the embedded
   in-process broker, or with --redis a Redis broker on db 14 and an in-process dramatiq Worker on it),
   sending into bench/smtp_sink.py, which runs in its own process so it does not share the sender's GIL;
4. measures the raw ceiling: bare aiosmtplib, the same number of connections as the SMTP pool, one
   pre-built ~10 KB message sent N times into the same sink.

It checks that every delivery is `sent` and that the sink received N messages in each phase.

    .venv/bin/python bench/tick_drain.py [--leads 2000] [--runs 3] [--threads 8] [--pool 4]
                                         [--sqlite] [--redis [--redis-db 14]] [--now 2026-11-24T13:00:00Z]
                                         [--message-kb 10] [--log-level WARNING] [--profile PATH]

--profile samples each drain with py-spy (`.venv/bin/pip install py-spy`; not a project dependency) into
PATH-runN; `bench/profile_summary.py PATH-run1` sorts the samples into rendering, SMTP, database and so on.
PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path

import aiosmtplib
import redis
from common import (
    ROOT,
    SinkProcess,
    add_runs_option,
    create_pg_database,
    create_sqlite_database,
    drop_pg_database,
    generate_leads,
    summary,
)
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import func, select

from nurture.catalog import Catalog, load_catalog
from nurture.clock import FrozenClock, parse_instant
from nurture.core.schedule import due_at, lead_zone
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.logs import configure_logging
from nurture.scheduler import Scheduler
from nurture.service import Service, open_service, start_worker
from nurture.settings import Settings

REDIS_DB = 14
SECRET = "bench-secret-key-0123456789abcdef"
DRAIN_TIMEOUT_S = 600
WORKER_STOP_TIMEOUT_MS = 60_000
# Zones tried for the leads; only those whose window is open at --now (in every campaign) are used.
ZONES = (
    "Europe/London",
    "Europe/Lisbon",
    "Europe/Berlin",
    "Europe/Paris",
    "Europe/Madrid",
    "Europe/Warsaw",
    "Europe/Helsinki",
    "Europe/Istanbul",
    "Africa/Lagos",
    "Africa/Johannesburg",
    "America/Sao_Paulo",
    "America/New_York",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Taipei",
    "Asia/Tokyo",
)


@dataclass(frozen=True, slots=True)
class TickFigures:
    import_s: float
    enrolled: int
    enroll_s: float
    enqueued: int
    dispatch_s: float
    drain_s: float
    drain_cpu_s: float  # CPU time of this (sending) process during the drain, all threads
    stop_s: float
    sent: int
    statuses: dict[str, int]


@dataclass(frozen=True, slots=True)
class RunFigures:
    tick: TickFigures
    received: int
    received_bytes: int
    connections: int
    ceiling_s: float
    ceiling_cpu_s: float
    ceiling_received: int

    def drain_rate(self) -> float:
        return self.tick.sent / self.tick.drain_s

    def ceiling_rate(self) -> float:
        return self.ceiling_received / self.ceiling_s


# --- the leads ------------------------------------------------------------------------------------------


def open_zones(catalog: Catalog, now: datetime) -> list[str]:
    """The zones in which every campaign's send window is open at `now` (day-0 mail is due at once)."""
    windows = [campaign.send_window for campaign in catalog.ordered()]
    return [z for z in ZONES if all(due_at(now, w, lead_zone(z, w)) == now for w in windows)]


# --- one run --------------------------------------------------------------------------------------------


def build_settings(args: argparse.Namespace, *, database_url: str, smtp_url: str, folder: Path) -> Settings:
    # Validated from these values only: nothing comes in from the environment or a .env file.
    return Settings.model_validate(
        {
            "database_url": database_url,
            "redis_url": redis_url(args) if args.redis else None,
            "smtp_url": smtp_url,
            "campaigns_dir": ROOT / "campaigns",
            "templates_dir": ROOT / "templates",
            "reps_file": ROOT / "reps.yaml",
            "scoring_file": ROOT / "scoring.yaml",
            "data_dir": folder / "var",
            "secret_key": SECRET,
            "worker_threads": args.threads,
            "smtp_pool_size": args.pool,
            "claim_batch": max(args.leads, 1000),  # one pass claims every lead's day-0 delivery
            "log_level": args.log_level,
        }
    )


async def tick_and_drain(
    settings: Settings, rows: Sequence[dict[str, str]], now: datetime, *, profile: Path | None = None
) -> TickFigures:
    clock = FrozenClock(now)
    service = await open_service(settings, clock=clock)
    try:
        db, catalog = service.runtime.db, service.runtime.catalog
        started = time.perf_counter()
        # 1000, not the flow's 2000: a 2000-row batch exceeds asyncpg's 32,767 bind parameters (README).
        report = await import_leads(db, rows, now=now - timedelta(days=1), batch_size=1000)
        if report.rejected:
            raise RuntimeError(f"{len(report.rejected)} generated leads were rejected: {report.rejected[0]}")
        imported = time.perf_counter()
        # One scheduler pass, timed in two halves: (a) the enroll that Scheduler.tick starts with, then
        # (b) Scheduler.tick itself, whose own enroll now finds nothing flagged, so it times the dispatch:
        # claiming the due deliveries and enqueueing them.
        enrolled = await enroll(db, catalog, now)
        enrolled_at = time.perf_counter()
        result = await build_scheduler(service).tick(now)
        dispatched = time.perf_counter()
        if result.enrolled:
            raise RuntimeError(f"the tick enrolled {result.enrolled} more leads after the enroll pass")
        enqueued = result.claimed
        with py_spy(profile):
            drain_s, drain_cpu_s, stop_s = await asyncio.to_thread(drain, service, settings.worker_threads)
        statuses = await count_statuses(db)
    finally:
        await service.runtime.aclose()
        if isinstance(service.actors.broker, RedisBroker):
            service.actors.broker.client.close()  # so the db is ours alone again for flush_redis
    return TickFigures(
        import_s=imported - started,
        enrolled=enrolled,
        enroll_s=enrolled_at - imported,
        enqueued=enqueued,
        dispatch_s=dispatched - enrolled_at,
        drain_s=drain_s,
        drain_cpu_s=drain_cpu_s,
        stop_s=stop_s,
        sent=statuses.get("sent", 0),
        statuses=statuses,
    )


def build_scheduler(service: Service) -> Scheduler:
    return Scheduler(service.runtime, service.actors)


def drain(service: Service, threads: int) -> tuple[float, float, float]:
    """`nurture.service.drain` with a time limit: return the seconds until drained, the CPU seconds this
    process used meanwhile, and the seconds the worker took to stop."""
    broker = service.actors.broker
    started, cpu_started = time.perf_counter(), time.process_time()
    worker: Worker = start_worker(service, threads)
    try:
        for queue in service.actors.queues:
            if isinstance(broker, StubBroker):
                broker.join(queue, timeout=DRAIN_TIMEOUT_S * 1000, fail_fast=False)
            else:
                broker.join(queue, timeout=DRAIN_TIMEOUT_S * 1000)
        worker.join()
        drained, cpu_drained = time.perf_counter(), time.process_time()
    finally:
        stopping = time.perf_counter()
        worker.stop(timeout=WORKER_STOP_TIMEOUT_MS)
    return drained - started, cpu_drained - cpu_started, time.perf_counter() - stopping


@contextmanager
def py_spy(output: Path | None) -> Iterator[None]:
    """Sample this process with py-spy (threads holding the GIL) into `output`, in py-spy's raw format."""
    if output is None:
        yield
        return
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
    command = [found, "record", "--pid", str(os.getpid()), "--gil", "--nonblocking", "--rate", "250"]
    spy = subprocess.Popen(
        [*command, "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach before the drain starts
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


async def count_statuses(db: Database) -> dict[str, int]:
    async with db.transaction() as conn:
        rows = await conn.execute(
            select(deliveries.c.status, func.count()).where(deliveries.c.step_index == 0).group_by("status")
        )
        return {status: int(count) for status, count in rows}


# --- the raw ceiling ------------------------------------------------------------------------------------


def prebuilt_message(size_kb: int) -> bytes:
    """A multipart/alternative message of about `size_kb` KB, headers like a nurture email's."""
    message = EmailMessage()
    message["From"] = "Acme Flow <growth@acmeflow.example>"
    message["To"] = "Jürgen Wagner <juergen.wagner@bench.example>"
    message["Subject"] = "Jürgen, what ops teams automate first"
    message["Message-ID"] = make_msgid(domain="acmeflow.example")
    message["List-Unsubscribe"] = "<https://nurture.example/u/bench-token>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["X-Nurture-Campaign"] = "saas-nurture"
    message["X-Nurture-Step"] = "welcome"
    sentence = "Most operations teams start by automating the hand-offs that nobody owns. "
    budget = size_kb * 1024
    text = (sentence * (budget // 3 // len(sentence) + 1))[: budget // 3]
    paragraph = f'<p style="margin:0 0 16px;font:15px/1.5 Arial,sans-serif;color:#1f2933">{sentence}</p>\n'
    html = "<html><body>\n" + paragraph * (budget * 2 // 3 // len(paragraph)) + "</body></html>\n"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message.as_bytes(policy=SMTP_POLICY)


async def raw_ceiling(
    host: str, port: int, *, connections: int, count: int, data: bytes
) -> tuple[float, float]:
    """Send `data` `count` times over `connections` aiosmtplib connections; return the seconds taken and the
    CPU seconds this process used meanwhile."""
    remaining = count
    finished: list[float] = []

    async def sender() -> None:
        nonlocal remaining
        client = aiosmtplib.SMTP(hostname=host, port=port, timeout=30, start_tls=False)
        await client.connect()
        try:
            while remaining > 0:
                remaining -= 1
                await client.mail("growth@acmeflow.example")
                await client.rcpt("juergen.wagner@bench.example")
                await client.data(data)
            finished.append(time.perf_counter())
        finally:
            await client.quit()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender() for _ in range(connections)))
    return max(finished) - started, time.process_time() - cpu_started


# --- driver ---------------------------------------------------------------------------------------------


def redis_url(args: argparse.Namespace) -> str:
    return f"redis://127.0.0.1:6379/{args.redis_db}"


def flush_redis(url: str) -> str | None:
    """Empty the benchmark's Redis db, unless another process is connected to it (its work would be lost,
    and a worker of its own would take our messages); return why it was left alone, or None."""
    client = redis.Redis.from_url(url)
    try:
        mine, db = client.client_id(), client.connection_pool.connection_kwargs.get("db", 0)
        others = [c for c in client.client_list() if int(c["db"]) == db and int(c["id"]) != mine]
        if others:
            addresses = ", ".join(sorted(c["addr"] for c in others))
            return f"{len(others)} other clients use {url} ({addresses})"
        client.flushdb()
        return None
    finally:
        client.close()


def run_once(
    args: argparse.Namespace, sink: SinkProcess, folder: Path, rows: Sequence[dict[str, str]], number: int
) -> RunFigures:
    name = f"bench_tick_{os.getpid()}"
    database = folder / "tick.db"
    url = asyncio.run(create_sqlite_database(database) if args.sqlite else create_pg_database(name))
    refused: str | None = "not flushed yet"
    try:
        refused = flush_redis(redis_url(args)) if args.redis else None
        if refused:
            raise SystemExit(f"{refused}: try another --redis-db")
        settings = build_settings(args, database_url=url, smtp_url=sink.url, folder=folder)
        sink.reset()
        profile = args.profile
        if profile is not None:
            profile = profile.with_name(f"{profile.stem}-run{number}{profile.suffix}")
        tick = asyncio.run(tick_and_drain(settings, rows, args.now, profile=profile))
        received = sink.count()
        sink.reset()
        data = prebuilt_message(args.message_kb)
        ceiling_s, ceiling_cpu_s = asyncio.run(
            raw_ceiling(sink.host, sink.port, connections=args.pool, count=len(rows), data=data)
        )
        ceiling_received = sink.count().messages
    finally:
        if not args.sqlite:
            asyncio.run(drop_pg_database(name))
        if args.redis and refused is None:
            flush_redis(redis_url(args))  # leaves the db alone if someone connected meanwhile
    return RunFigures(
        tick=tick,
        received=received.messages,
        received_bytes=received.bytes,
        connections=received.connections,
        ceiling_s=ceiling_s,
        ceiling_cpu_s=ceiling_cpu_s,
        ceiling_received=ceiling_received,
    )


def check(run: RunFigures, leads: int) -> None:
    tick = run.tick
    expected = {
        "enrolled": tick.enrolled,
        "enqueued": tick.enqueued,
        "sent": tick.sent,
        "received by the sink": run.received,
        "received by the sink (ceiling)": run.ceiling_received,
    }
    wrong = {what: got for what, got in expected.items() if got != leads}
    if wrong:
        raise SystemExit(f"expected {leads} everywhere, got {wrong}; day-0 statuses {tick.statuses}")


def describe(number: int, run: RunFigures) -> str:
    tick = run.tick
    average_kb = run.received_bytes / max(run.received, 1) / 1024
    return "\n    ".join(
        (
            f"run {number}: enroll {tick.enrolled} leads in {tick.enroll_s:.2f} s, "
            f"dispatch+enqueue {tick.enqueued} in {tick.dispatch_s:.3f} s",
            f"drain {tick.sent} emails in {tick.drain_s:.2f} s = {run.drain_rate():,.0f} emails/s "
            f"(sink got {run.received}, avg {average_kb:.1f} KB, {run.connections} SMTP connections; "
            f"sender CPU {tick.drain_cpu_s / tick.drain_s:.2f} cores; worker stop {tick.stop_s:.2f} s)",
            f"ceiling {run.ceiling_received} emails in {run.ceiling_s:.2f} s = {run.ceiling_rate():,.0f} "
            f"emails/s (sender CPU {run.ceiling_cpu_s / run.ceiling_s:.2f} cores); "
            f"drain/ceiling {run.drain_rate() / run.ceiling_rate():.2f}",
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=2000, help="leads, hence day-0 emails (default 2000)")
    add_runs_option(parser)
    parser.add_argument("--threads", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument(
        "--pool", type=int, default=4, help="SMTP pool size, also the ceiling's connections (4)"
    )
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL")
    parser.add_argument("--redis", action="store_true", help="the Redis broker (on 127.0.0.1:6379)")
    parser.add_argument("--redis-db", type=int, default=REDIS_DB, help=f"the Redis db (default {REDIS_DB})")
    parser.add_argument("--now", type=parse_instant, default=parse_instant("2026-11-24T13:00:00Z"))
    parser.add_argument("--message-kb", type=int, default=10, help="the ceiling's message size (10)")
    parser.add_argument("--log-level", default="WARNING", help="nurture's log level (INFO = production)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="sample each drain with py-spy into PATH-runN (raw format; see bench/profile_summary.py)",
    )
    args = parser.parse_args()
    if min(args.leads, args.runs, args.threads, args.pool, args.message_kb) < 1:
        parser.error("--leads, --runs, --threads, --pool and --message-kb must be positive")
    return args


def main() -> None:
    args = parse_args()
    configure_logging(level=args.log_level)
    logging.getLogger("nurture").setLevel(args.log_level.upper())
    catalog = load_catalog(
        campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
    )
    zones = open_zones(catalog, args.now)
    if not zones:
        raise SystemExit(f"no send window is open at {args.now.isoformat()} in any of {', '.join(ZONES)}")
    rows = list(generate_leads(args.leads, grade="nurturable", stage="lead", zones=zones))
    backend = "sqlite" if args.sqlite else "postgresql"
    broker = "redis" if args.redis else "embedded"
    print(
        f"tick_drain: {args.leads} leads, {backend}, {broker} broker, {args.threads} worker threads, "
        f"SMTP pool {args.pool}, now {args.now.isoformat()} ({len(zones)} open zones), {args.runs} runs"
    )
    runs: list[RunFigures] = []
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp, SinkProcess() as sink:
        for number in range(1, args.runs + 1):
            folder = Path(tmp) / f"run{number}"
            folder.mkdir()
            run = run_once(args, sink, folder, rows, number)
            check(run, args.leads)
            runs.append(run)
            print(describe(number, run), flush=True)
        final = sink.count()
    print()
    print(summary("(a) enroll", [r.tick.enroll_s for r in runs], "s", digits=2))
    print(summary("(b) dispatch + enqueue", [r.tick.dispatch_s for r in runs], "s", digits=3))
    print(summary("(c) drain", [r.tick.drain_s for r in runs], "s", digits=2))
    print(summary("drain", [r.drain_rate() for r in runs], "emails/s"))
    cores = [r.tick.drain_cpu_s / r.tick.drain_s for r in runs]
    print(summary("sender process CPU in the drain", cores, "cores", digits=2))
    print(summary("raw aiosmtplib ceiling", [r.ceiling_rate() for r in runs], "emails/s"))
    per_email = [1000 * r.tick.drain_cpu_s / r.tick.sent for r in runs]
    print(summary("sender CPU per email, drain", per_email, "ms", digits=2))
    per_email = [1000 * r.ceiling_cpu_s / r.ceiling_received for r in runs]
    print(summary("sender CPU per email, ceiling", per_email, "ms", digits=2))
    ratios = [r.drain_rate() / r.ceiling_rate() for r in runs]
    print(summary("drain / ceiling", ratios, "", digits=2))
    print(summary("(setup) import", [r.tick.import_s for r in runs], "s", digits=2))
    expected = sum(r.tick.enqueued + len(rows) for r in runs)
    print(f"sink: {final.total:,} messages received in all, {expected:,} sent")
    if final.total != expected:
        raise SystemExit("the sink did not receive every message")


if __name__ == "__main__":
    main()
