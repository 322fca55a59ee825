"""Benchmark: open-pixel and click requests per second through one `nurture web` process, next to a bare
ASGI app on the same server stack.

Each run, on a fresh PostgreSQL database (`bench_rps_<pid>`):

1. imports --leads nurturable leads and enrolls them, so each has its day-0 delivery; pixel and click URLs are
   signed for those (lead, delivery) pairs with the web's key, as the worker puts them in an email;
2. starts `nurture web` (uvicorn) with Redis db 14 as its broker: every recorded event enqueues the lead's
   re-score there (no worker runs; the queue is flushed after the run);
3. starts the reference, `ReferenceApp` below in this script's own process under the same uvicorn settings
   as `nurture.web.server.build_server` (uvicorn's default loop and HTTP implementation, no access log, no
   lifespan): it answers every GET with the same GIF and makes one Redis write (INCR) per request;
4. drives each with a raw asyncio HTTP/1.1 client: --requests GETs spread over --connections keep-alive
   connections, each connection one request at a time, after --warmup requests that are not counted. Every
   answer's status is checked (200 for the pixel, 307 for the click).

It prints requests per second, p50 and p99 latency, and nurture / reference for the pixel and the click.

    .venv/bin/python bench/tracking_rps.py [--requests 20000] [--connections 16] [--runs 3] [--leads 1000]
                                           [--warmup 1000] [--log-level WARNING]

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import uvicorn
from common import (
    ROOT,
    add_runs_option,
    create_pg_database,
    drop_pg_database,
    free_port,
    generate_leads,
    summary,
)
from sqlalchemy import select

from nurture.catalog import load_catalog
from nurture.core.tracking import click_url, open_url
from nurture.db.engine import Database
from nurture.db.queries.tables import deliveries
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.web.tracking import NO_CACHE, PIXEL_GIF

REDIS_URL = "redis://127.0.0.1:6379/14"
SECRET = "bench-secret-key-0123456789abcdef"
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TARGET = "https://acmeflow.example/tour/first-three-workflows"
USER_AGENT = "Mozilla/5.0 (tracking-rps bench)"
MAX_REQUESTS = 1_000_000
MAX_CONNECTIONS = 1000
START_TIMEOUT_S = 60


# --- the reference -----------------------------------------------------------------------------------------


class ReferenceApp:
    """The least a pixel endpoint can do: one Redis write, then the GIF, straight on ASGI."""

    def __init__(self, redis_url: str) -> None:
        self._redis = redis.asyncio.Redis.from_url(redis_url)
        self._headers = [
            (b"content-type", b"image/gif"),
            (b"content-length", str(len(PIXEL_GIF)).encode()),
            *((name.lower().encode(), value.encode()) for name, value in NO_CACHE.items()),
        ]

    async def __call__(self, scope: dict[str, Any], _receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await self._redis.incr("bench:reference:requests")
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        await send({"type": "http.response.body", "body": PIXEL_GIF})


def serve_reference(port: int) -> None:
    """Run `ReferenceApp` with the settings `build_server` gives the tracking web (until SIGTERM)."""
    config = uvicorn.Config(
        ReferenceApp(REDIS_URL),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        ws="none",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


# --- the client --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    requests: int
    seconds: float
    latencies_ms: tuple[float, ...]
    server_cpu_s: float = float("nan")  # CPU time the server process used meanwhile (Linux only)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request_us(self) -> float:
        return self.server_cpu_s / self.requests * 1e6

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile `q` (0-100) of the latencies."""
        ordered = sorted(self.latencies_ms)
        rank = max(1, -(-len(ordered) * q // 100))
        return ordered[int(rank) - 1]


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, expected: int
) -> None:
    """Send one GET on a keep-alive connection and read its whole answer."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    length = next(
        (int(v) for n, _, v in (x.partition(":") for x in lines) if n.lower() == "content-length"), None
    )
    if length is None:
        raise RuntimeError(f"an answer without Content-Length: {head!r}")
    await reader.readexactly(length)
    if status != expected:
        raise RuntimeError(f"expected {expected}, got {status_line!r}")


async def hammer(port: int, paths: Sequence[str], *, requests: int, connections: int, expected: int) -> Phase:
    """GET `paths` in turn, `requests` in all, over `connections` keep-alive connections."""
    head = f"HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n\r\n"
    encoded = [f"GET {p} {head}".encode() for p in paths]
    latencies: list[float] = []
    issued = 0

    async def connection() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while issued < requests:
                request = encoded[issued % len(encoded)]
                issued += 1
                started = time.perf_counter()
                await _get(reader, writer, request, expected)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            writer.close()
            await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(min(connections, requests))))
    return Phase(len(latencies), time.perf_counter() - started, tuple(latencies))


def run_phase(port: int, paths: Sequence[str], args: argparse.Namespace, *, expected: int, pid: int) -> Phase:
    """Warm up, then measure; `pid` is the server's process, whose CPU time is counted."""
    if args.warmup:
        asyncio.run(
            hammer(port, paths, requests=args.warmup, connections=args.connections, expected=expected)
        )
    cpu_before = process_cpu_s(pid)
    phase = asyncio.run(
        hammer(port, paths, requests=args.requests, connections=args.connections, expected=expected)
    )
    return replace(phase, server_cpu_s=process_cpu_s(pid) - cpu_before)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far, from /proc (NaN where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the servers -------------------------------------------------------------------------------------------


@contextmanager
def server(command: Sequence[str], env: dict[str, str], log: Path, port: int) -> Iterator[int]:
    """Run `command` (stderr into `log`) until it answers on `port`, and yield its pid; SIGTERM it after."""
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, cwd=log.parent, stderr=handle)
        try:
            wait_until_listening(port, process, log)
            yield process.pid
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    async def answers() -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            return (await reader.read(12)).startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
            await writer.wait_closed()

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited:\n{log.read_text()[-2000:]}")
        if asyncio.run(answers()):
            return
        time.sleep(0.05)
    raise SystemExit(
        f"{process.args!r} did not answer within {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}"
    )


def web_env(folder: Path, *, database_url: str, base_url: str, log_level: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    env.update(
        NURTURE_DATABASE_URL=database_url,
        NURTURE_REDIS_URL=REDIS_URL,
        NURTURE_SECRET_KEY=SECRET,
        NURTURE_BASE_URL=base_url,
        NURTURE_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(ROOT / "templates"),
        NURTURE_REPS_FILE=str(ROOT / "reps.yaml"),
        NURTURE_SCORING_FILE=str(ROOT / "scoring.yaml"),
        NURTURE_DATA_DIR=str(folder / "var"),
        NURTURE_LOG_LEVEL=log_level,
    )
    return env


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


# --- one run -----------------------------------------------------------------------------------------------


async def seed(database_url: str, leads: int) -> list[tuple[int, int]]:
    """Import and enroll `leads` leads; return each one's (lead id, day-0 delivery id)."""
    catalog = load_catalog(
        campaigns_dir=ROOT / "campaigns", templates_dir=ROOT / "templates", reps_file=ROOT / "reps.yaml"
    )
    rows = list(generate_leads(leads, grade="nurturable", stage="lead", zones=["Europe/Berlin"]))
    db = Database(database_url)
    try:
        report = await import_leads(db, rows, now=NOW - timedelta(days=1), batch_size=1000)
        if report.rejected:
            raise SystemExit(f"{len(report.rejected)} generated leads were rejected: {report.rejected[0]}")
        await enroll(db, catalog, NOW)
        async with db.transaction() as conn:
            found = await conn.execute(
                select(deliveries.c.lead_id, deliveries.c.id)
                .where(deliveries.c.step_index == 0)
                .order_by(deliveries.c.id)
            )
            pairs = [(int(row.lead_id), int(row.id)) for row in found]
    finally:
        await db.aclose()
    if len(pairs) != leads:
        raise SystemExit(f"expected {leads} day-0 deliveries, found {len(pairs)}")
    return pairs


@dataclass(frozen=True, slots=True)
class RunFigures:
    reference: Phase
    pixel: Phase
    click: Phase


def run_once(args: argparse.Namespace, folder: Path) -> RunFigures:
    name = f"bench_rps_{os.getpid()}"
    database_url = asyncio.run(create_pg_database(name))
    flush_redis()
    try:
        pairs = asyncio.run(seed(database_url, args.leads))
        web_port, reference_port = free_port(), free_port()
        base_url = f"http://127.0.0.1:{web_port}"
        key = SECRET.encode()
        prefix = len(base_url)
        pixels = [open_url(base_url, lead_id=lead, delivery_id=d, key=key)[prefix:] for lead, d in pairs]
        clicks = [
            click_url(base_url, lead_id=lead, delivery_id=d, url=TARGET, key=key)[prefix:]
            for lead, d in pairs
        ]
        env = web_env(folder, database_url=database_url, base_url=base_url, log_level=args.log_level)
        reference_command = [sys.executable, __file__, "--serve-reference", str(reference_port)]
        with server(reference_command, env, folder / "reference.log", reference_port) as pid:
            reference = run_phase(reference_port, pixels, args, expected=200, pid=pid)
        web_command = [sys.executable, "-m", "nurture", "web", "--host", "127.0.0.1", "--port", str(web_port)]
        with server(web_command, env, folder / "web.log", web_port) as pid:
            pixel = run_phase(web_port, pixels, args, expected=200, pid=pid)
            click = run_phase(web_port, clicks, args, expected=307, pid=pid)
        asyncio.run(check_recorded(database_url, args))
    finally:
        flush_redis()
        asyncio.run(drop_pg_database(name))
    return RunFigures(reference=reference, pixel=pixel, click=click)


async def check_recorded(database_url: str, args: argparse.Namespace) -> None:
    """Every pixel and click request was recorded as an event (the web answers even when recording fails)."""
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            count = (await conn.exec_driver_sql("SELECT count(*) FROM events")).scalar_one()
    finally:
        await db.aclose()
    expected = 2 * (args.requests + args.warmup)
    if count != expected:
        raise SystemExit(f"{count} events recorded for {expected} pixel and click requests")


def describe(number: int, run: RunFigures) -> str:
    def line(label: str, phase: Phase) -> str:
        return (
            f"{label:<20} {phase.rate:8,.0f} req/s  p50 {phase.percentile(50):6.2f} ms  "
            f"p99 {phase.percentile(99):6.2f} ms  ({phase.requests} in {phase.seconds:.2f} s; server "
            f"{phase.server_cpu_s / phase.seconds:.2f} cores, {phase.cpu_per_request_us:.0f} us CPU/req)"
        )

    return "\n    ".join(
        (
            f"run {number}:",
            line("reference (GIF+INCR)", run.reference),
            line("nurture pixel", run.pixel),
            line("nurture click", run.click),
            f"pixel / reference {run.pixel.rate / run.reference.rate:.3f}, "
            f"click / reference {run.click.rate / run.reference.rate:.3f}",
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000, help="measured GETs per phase (20000)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    add_runs_option(parser)
    parser.add_argument("--leads", type=int, default=1000, help="leads the URLs are spread over (1000)")
    parser.add_argument("--warmup", type=int, default=1000, help="uncounted GETs before each phase (1000)")
    parser.add_argument("--log-level", default="WARNING", help="the web's log level (INFO = production)")
    parser.add_argument("--serve-reference", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--requests is 1..{MAX_REQUESTS}, --connections 1..{MAX_CONNECTIONS}")
    if args.runs < 1 or args.leads < 1 or not 0 <= args.warmup <= MAX_REQUESTS:
        parser.error("--runs and --leads must be positive, --warmup not negative")
    return args


def main() -> None:
    args = parse_args()
    if args.serve_reference is not None:
        serve_reference(args.serve_reference)
        return
    print(
        f"tracking_rps: {args.requests} GETs per phase (+{args.warmup} warm-up) over {args.connections} "
        f"keep-alive connections, {args.leads} leads, PostgreSQL + Redis, {args.runs} runs"
    )
    runs: list[RunFigures] = []
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
        for number in range(1, args.runs + 1):
            folder = Path(tmp) / f"run{number}"
            folder.mkdir()
            run = run_once(args, folder)
            runs.append(run)
            print(describe(number, run), flush=True)
    print()
    measured = {
        "reference GIF+INCR": [r.reference for r in runs],
        "nurture pixel": [r.pixel for r in runs],
        "nurture click": [r.click for r in runs],
    }
    for label, phases in measured.items():
        print(summary(f"{label}", [p.rate for p in phases], "req/s"))
        print(summary(f"{label} p50", [p.percentile(50) for p in phases], "ms", digits=2))
        print(summary(f"{label} p99", [p.percentile(99) for p in phases], "ms", digits=2))
        cpu = [p.cpu_per_request_us for p in phases]
        print(summary(f"{label} server CPU per request", cpu, "us"))
    print(summary("pixel / reference", [r.pixel.rate / r.reference.rate for r in runs], "", digits=3))
    print(summary("click / reference", [r.click.rate / r.reference.rate for r in runs], "", digits=3))


if __name__ == "__main__":
    main()
