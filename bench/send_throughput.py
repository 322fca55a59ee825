"""Benchmark: emails per second end to end with 1 and 2 `nurture worker` processes, next to two references
measured in the same run, and a worker's memory over a long run.

End to end, per run, on a fresh PostgreSQL database (`bench_send_<pid>`) and Redis db 14:
N leads are imported and enrolled (not timed); K `nurture worker` processes are started and waited for;
then the clock starts, one scheduler pass claims the N due day-0 deliveries and enqueues them (batches of
NURTURE_SEND_BATCH_SIZE), and the clock stops when every delivery has its final state committed. The mail
goes to Postfix's `smtp-sink` on a free loopback port.

References, same sink, same concurrency (K processes, each with --pool SMTP connections):
  (a) ceiling: a bare aiosmtplib loop sending one pre-built message;
  (b) floor: a bare loop that renders each lead's step (the same templates and context as the workers),
      builds the MIME message (`core.message.compose`) and sends it: no queue, no database, no tracking.

Memory (--memory M): one worker sends M emails in 5 equal rounds; its RSS is printed after each round.
The SMTP window (end of DATA -> outcome written) is read back from the `email_sent` touchpoints.

    .venv/bin/python bench/send_throughput.py [--leads 5000] [--runs 3] [--workers 1,2] [--threads 8]
                                              [--pool 4] [--memory 50000] [--smoke]

Needs /usr/sbin/smtp-sink (Debian package postfix: `DEBIAN_FRONTEND=noninteractive apt-get install -y
postfix`; the script installs it when it is missing and it runs as root). PostgreSQL comes from
NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from common import (
    ROOT,
    add_runs_option,
    create_pg_database,
    drop_pg_database,
    free_port,
    generate_leads,
    summary,
)
from dramatiq.brokers.redis import RedisBroker
from send_refs import Reference, run_references
from sqlalchemy import Row, func, select
from tick_drain import flush_redis, open_zones

from nurture.catalog import load_catalog
from nurture.clock import FileClock, FrozenClock, parse_instant
from nurture.core.lead import PROFILE_FIELDS
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries, leads, touchpoints
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.scheduler import Scheduler
from nurture.service import open_service
from nurture.settings import Settings

SMTP_SINK = "/usr/sbin/smtp-sink"
SECRET = "bench-secret-key-0123456789abcdef"
FINAL = ("sent", "failed", "unknown", "skipped", "cancelled", "shadowed")
SEND_TIMEOUT_S = 600
READY_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class Run:
    workers: int
    sent: int
    seconds: float
    cpu_ms: float  # worker CPU per email, all worker processes
    ceiling: Reference
    floor: Reference
    window_ms: list[float]
    rss_mb: list[float]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds


# --- services ---------------------------------------------------------------------------------------------


def ensure_smtp_sink() -> None:
    if Path(SMTP_SINK).exists():
        return
    if os.geteuid() != 0:
        raise SystemExit(
            f"{SMTP_SINK} is missing: sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "postfix"], check=True, env=env)


@contextmanager
def smtp_sink() -> Iterator[int]:
    """Postfix's smtp-sink on a free loopback port; yield the port."""
    port = free_port()
    sink = subprocess.Popen(
        [SMTP_SINK, "-u", "root", f"127.0.0.1:{port}", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        sink.terminate()
        sink.wait(timeout=10)


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"smtp-sink did not listen on port {port}")


def settings_env(args: argparse.Namespace, *, database_url: str, port: int, folder: Path) -> dict[str, str]:
    return {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_REDIS_URL": args.redis_url,
        "NURTURE_SMTP_URL": f"smtp://127.0.0.1:{port}",
        "NURTURE_SECRET_KEY": SECRET,
        "NURTURE_CAMPAIGNS_DIR": str(ROOT / "campaigns"),
        "NURTURE_TEMPLATES_DIR": str(ROOT / "templates"),
        "NURTURE_REPS_FILE": str(ROOT / "reps.yaml"),
        "NURTURE_SCORING_FILE": str(ROOT / "scoring.yaml"),
        "NURTURE_DATA_DIR": str(folder / "var"),
        "NURTURE_CLOCK_FILE": str(folder / "clock"),
        "NURTURE_WORKER_THREADS": str(args.threads),
        "NURTURE_SMTP_POOL_SIZE": str(args.pool),
        "NURTURE_LOG_LEVEL": "WARNING",
    }


def settings_from(env: dict[str, str], *, claim_batch: int) -> Settings:
    values: dict[str, object] = {k.removeprefix("NURTURE_").lower(): v for k, v in env.items()}
    return Settings.model_validate({**values, "claim_batch": claim_batch, "clock_file": None})


@contextmanager
def workers(count: int, env: dict[str, str], folder: Path, redis_url: str) -> Iterator[list[int]]:
    """Start `count` `nurture worker` processes and wait until each has registered with Redis."""
    full_env = {**os.environ, **env}
    procs = [
        subprocess.Popen([str(ROOT / ".venv/bin/nurture"), "worker"], env=full_env, cwd=folder)
        for _ in range(count)
    ]
    try:
        wait_for_workers(redis_url, count, procs)
        yield [p.pid for p in procs]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for_workers(url: str, count: int, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while client.zcard("dramatiq:__heartbeats__") < count:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise SystemExit("a worker did not start")
            time.sleep(0.1)
    finally:
        client.close()


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- one run ----------------------------------------------------------------------------------------------


async def seed(settings: Settings, rows: Sequence[dict[str, str]], now: datetime, jobs_file: Path) -> None:
    """Import and enroll the leads; write what the floor needs to render each lead's due step."""
    db = Database(settings.effective_database_url)
    catalog = load_catalog(
        campaigns_dir=settings.campaigns_dir,
        templates_dir=settings.templates_dir,
        reps_file=settings.reps_file,
    )
    try:
        report = await import_leads(db, rows, now=now, batch_size=1000)
        if report.rejected:
            raise SystemExit(f"{len(report.rejected)} generated leads were rejected")
        await enroll(db, catalog, now)
        async with db.transaction() as conn:
            due = await conn.execute(
                select(
                    deliveries.c.id.label("delivery_id"),
                    deliveries.c.campaign_id,
                    deliveries.c.step_id,
                    leads,
                )
                .join(leads, leads.c.id == deliveries.c.lead_id)
                .where(deliveries.c.due_at <= now, deliveries.c.status == "pending")
            )
            jobs = [_job(row) for row in due]
    finally:
        await db.aclose()
    await asyncio.to_thread(jobs_file.write_text, json.dumps(jobs), encoding="utf-8")


def _job(row: Row[Any]) -> dict[str, Any]:
    m = row._mapping
    fields = ("email", *PROFILE_FIELDS, "grade", "stage", "score")
    return {
        "delivery_id": m["delivery_id"],
        "lead_id": m["id"],
        "campaign_id": m["campaign_id"],
        "step_id": m["step_id"],
        "profile": {name: m[name] for name in fields} | {"tags": dict(m["tags"] or {})},
    }


async def tick_once(settings: Settings, now: datetime) -> int:
    """One scheduler pass: claim what is due, enqueue it on Redis; return how many."""
    service = await open_service(settings, clock=FrozenClock(now))
    try:
        result = await Scheduler(service.runtime, service.actors).tick(now)
        return result.claimed
    finally:
        await service.runtime.aclose()
        broker = service.actors.broker
        broker.close()
        if isinstance(broker, RedisBroker):  # so the db is ours alone again for flush_redis
            broker.client.connection_pool.disconnect()


async def wait_final(database_url: str, expected: int) -> None:
    db = Database(database_url)
    deadline = time.monotonic() + SEND_TIMEOUT_S
    try:
        while True:
            async with db.transaction() as conn:
                done = (
                    await conn.execute(
                        select(func.count()).select_from(deliveries).where(deliveries.c.status.in_(FINAL))
                    )
                ).scalar_one()
            if done >= expected:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"only {done} of {expected} deliveries finished in {SEND_TIMEOUT_S} s")
            await asyncio.sleep(0.02)
    finally:
        await db.aclose()


async def sent_and_windows(database_url: str) -> tuple[int, list[float]]:
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            sent = (
                await conn.execute(
                    select(func.count()).select_from(deliveries).where(deliveries.c.status == "sent")
                )
            ).scalar_one()
            details = (
                await conn.execute(select(touchpoints.c.detail).where(touchpoints.c.kind == "email_sent"))
            ).scalars()
            windows = [float(d["smtp_window_ms"]) for d in details if "smtp_window_ms" in d]
    finally:
        await db.aclose()
    return int(sent), windows


@contextmanager
def fresh_stores(args: argparse.Namespace) -> Iterator[str]:
    name = f"bench_send_{os.getpid()}"
    refused = flush_redis(args.redis_url)
    for _ in range(50):  # the last run's workers may still be closing their connections
        if not refused:
            break
        time.sleep(0.1)
        refused = flush_redis(args.redis_url)
    if refused:
        raise SystemExit(f"{refused}: try another --redis-db")
    url = asyncio.run(create_pg_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_pg_database(name))
        flush_redis(args.redis_url)


def throughput_run(args: argparse.Namespace, count: int, rows: Sequence[dict[str, str]], port: int) -> Run:
    with tempfile.TemporaryDirectory(prefix="nurture-send-") as tmp, fresh_stores(args) as url:
        folder = Path(tmp)
        FileClock.write(folder / "clock", args.now)
        env = settings_env(args, database_url=url, port=port, folder=folder)
        settings = settings_from(env, claim_batch=len(rows))
        asyncio.run(seed(settings, rows, args.now, folder / "jobs.json"))
        with workers(count, env, folder, args.redis_url) as pids:
            started, cpu_started = time.perf_counter(), sum(cpu_s(pid) for pid in pids)
            claimed = asyncio.run(tick_once(settings, args.now))
            asyncio.run(wait_final(url, claimed))
            seconds = time.perf_counter() - started
            cpu_ms = 1000 * (sum(cpu_s(pid) for pid in pids) - cpu_started) / max(claimed, 1)
            rss = [rss_mb(pid) for pid in pids]
        sent, windows = asyncio.run(sent_and_windows(url))
        if sent != len(rows):
            raise SystemExit(f"expected {len(rows)} sent, got {sent}")
        ceiling, floor = run_references(
            processes=count, connections=args.pool, port=port, jobs_file=folder / "jobs.json", secret=SECRET
        )
    return Run(count, sent, seconds, cpu_ms, ceiling, floor, windows, rss)


def memory_run(
    args: argparse.Namespace, rows: Sequence[dict[str, str]], port: int
) -> list[tuple[int, float]]:
    rounds = 5
    step = len(rows) // rounds
    with tempfile.TemporaryDirectory(prefix="nurture-mem-") as tmp, fresh_stores(args) as url:
        folder = Path(tmp)
        FileClock.write(folder / "clock", args.now)
        env = settings_env(args, database_url=url, port=port, folder=folder)
        settings = settings_from(env, claim_batch=step)
        asyncio.run(seed(settings, rows, args.now, folder / "jobs.json"))
        figures = []
        with workers(1, env, folder, args.redis_url) as [pid]:
            for number in range(1, rounds + 1):
                asyncio.run(tick_once(settings, args.now))
                asyncio.run(wait_final(url, step * number))
                figures.append((step * number, rss_mb(pid)))
                print(f"  memory: {step * number:>7,} sent, worker RSS {figures[-1][1]:.0f} MB", flush=True)
    return figures


# --- output -----------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def describe(run: Run) -> str:
    rss = ", ".join(f"{r:.0f}" for r in run.rss_mb)
    return (
        f"{run.workers} worker(s): {run.sent} emails in {run.seconds:.2f} s = {run.rate:,.0f} emails/s, "
        f"{run.cpu_ms:.2f} ms CPU each; ceiling {run.ceiling.rate:,.0f}/s ({run.ceiling.cpu_ms:.2f} ms), "
        f"floor {run.floor.rate:,.0f}/s ({run.floor.cpu_ms:.2f} ms); "
        f"e2e/floor {run.rate / run.floor.rate:.2f}; "
        f"SMTP window p50 {percentile(run.window_ms, 0.5):.1f} ms, "
        f"p99 {percentile(run.window_ms, 0.99):.1f} ms; "
        f"worker RSS {rss} MB"
    )


def report(runs: list[Run], count: int) -> None:
    print(f"\n{count} worker(s):")
    print(summary("  end to end", [r.rate for r in runs], "emails/s"))
    print(summary("  (a) ceiling, bare aiosmtplib", [r.ceiling.rate for r in runs], "emails/s"))
    print(summary("  (b) floor, render + MIME + send", [r.floor.rate for r in runs], "emails/s"))
    print(summary("  end to end / floor", [r.rate / r.floor.rate for r in runs], "", digits=2))
    print(summary("  end to end / ceiling", [r.rate / r.ceiling.rate for r in runs], "", digits=2))
    print(summary("  CPU per email, end to end", [r.cpu_ms for r in runs], "ms", digits=2))
    print(summary("  CPU per email, floor", [r.floor.cpu_ms for r in runs], "ms", digits=2))
    print(summary("  CPU per email, ceiling", [r.ceiling.cpu_ms for r in runs], "ms", digits=2))
    print(summary("  floor CPU / end-to-end CPU", [r.floor.cpu_ms / r.cpu_ms for r in runs], "", digits=2))
    windows = [w for r in runs for w in r.window_ms]
    print(
        f"  SMTP window over {len(windows):,} sends: p50 {percentile(windows, 0.5):.1f} ms, "
        f"p99 {percentile(windows, 0.99):.1f} ms, max {max(windows, default=float('nan')):.1f} ms"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=5000, help="emails per throughput run (default 5000)")
    add_runs_option(parser)
    parser.add_argument("--workers", default="1,2", help="worker process counts to run (default 1,2)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (default 8)")
    parser.add_argument("--pool", type=int, default=4, help="SMTP connections per process (default 4)")
    parser.add_argument("--memory", type=int, default=50_000, help="emails in the memory run; 0 skips it")
    parser.add_argument("--redis-db", type=int, default=14, help="the Redis db to use and flush (14)")
    parser.add_argument("--now", type=parse_instant, default=parse_instant("2026-11-24T13:00:00Z"))
    parser.add_argument("--smoke", action="store_true", help="small sizes, one run: for CI")
    args = parser.parse_args()
    if args.smoke:
        args.leads, args.runs, args.memory = 200, 1, 500
    args.worker_counts = [int(part) for part in args.workers.split(",")]
    if min(args.leads, args.runs, args.threads, args.pool, *args.worker_counts) < 1 or args.memory < 0:
        parser.error("--leads, --runs, --threads, --pool and --workers must be positive")
    args.redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    return args


def main() -> None:
    args = parse_args()
    ensure_smtp_sink()
    catalog = load_catalog(
        campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
    )
    zones = open_zones(catalog, args.now)
    if not zones:
        raise SystemExit(f"no send window is open at {args.now.isoformat()}")
    rows = list(generate_leads(args.leads, grade="nurturable", stage="lead", zones=zones))
    print(
        f"send_throughput: {args.leads} emails per run, workers {args.worker_counts}, "
        f"{args.threads} threads, "
        f"{args.pool} SMTP connections per process, {args.runs} runs, {os.cpu_count()} cores"
    )
    with smtp_sink() as port:
        for count in args.worker_counts:
            runs = []
            for number in range(1, args.runs + 1):
                runs.append(throughput_run(args, count, rows, port))
                print(f"run {number}: {describe(runs[-1])}", flush=True)
            report(runs, count)
        if args.memory:
            many = list(generate_leads(args.memory, seed=11, grade="nurturable", stage="lead", zones=zones))
            print(f"\nmemory: one worker, {args.memory:,} emails in 5 rounds")
            figures = memory_run(args, many, port)
            growth = figures[-1][1] - figures[0][1]
            median = statistics.median(r for _, r in figures)
            print(f"  RSS {median:.0f} MB median, {growth:+.0f} MB from the first round to the last")


if __name__ == "__main__":
    main()
