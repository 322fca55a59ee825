"""Benchmark: open-pixel and click requests per second through one `nurture web` process, next to a bare
ASGI app on the same server stack.

Each run, on a fresh PostgreSQL database (`bench_rps_<pid>`) and a Redis database (flushed before and after):

1. imports --leads nurturable leads and enrolls them, so each has its day-0 delivery; pixel and click URLs are
   signed for those (lead, delivery) pairs with the web's key, as the worker puts them in an email;
2. starts the reference, `ReferenceApp` below in a process of its own, under the server stack
   `nurture.web.server.build_server` uses (uvicorn on uvloop + httptools when installed, no access log, no
   lifespan): it answers every GET with the same GIF and makes one Redis write (INCR) per request;
3. starts `nurture web` with Redis: each pixel or click is one XADD to the event stream, and the answer;
4. drives each with wrk (one thread, --connections keep-alive connections, the URLs in turn; installed from
   Debian's package when missing and run as root), a --warmup phase and then --seconds measured; any answer
   but 2xx/3xx fails the run;
5. starts one `nurture worker`, which stores the buffered events in PostgreSQL, times how long it takes to
   empty the stream, and checks every request answered was recorded as an event (wrk does not count the up to
   one request per connection still in flight when it stops, so up to that many more may be recorded).

It prints requests per second, p50 and p99 latency (wrk's), nurture / reference for the pixel and the click,
and the worker's drain rate, per run and as medians.

    .venv/bin/python bench/tracking_rps.py [--seconds 10] [--connections 16] [--runs 3] [--leads 1000]
                                           [--warmup 2] [--smoke] [--log-level WARNING]

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test), Redis from
NURTURE_BENCH_REDIS (default redis://127.0.0.1:6379/14; no other process may use that database meanwhile:
any `nurture worker` on it would consume the event stream too).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
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
from nurture.event_stream import STREAM
from nurture.flows.ingest import import_leads
from nurture.flows.tick import enroll
from nurture.web.server import fastest_stack
from nurture.web.tracking import NO_CACHE, PIXEL_GIF

REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS", "redis://127.0.0.1:6379/14")  # flushed before and after
SECRET = "bench-secret-key-0123456789abcdef"
NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
TARGET = "https://acmeflow.example/tour/first-three-workflows"
USER_AGENT = "Mozilla/5.0 (tracking-rps bench)"
MAX_SECONDS = 600
MAX_CONNECTIONS = 1000
START_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 300


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
    loop, http = fastest_stack()
    config = uvicorn.Config(
        ReferenceApp(REDIS_URL),
        loop=loop,
        http=http,
        host="127.0.0.1",
        port=port,
        lifespan="off",
        ws="none",
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


# --- the client: wrk ---------------------------------------------------------------------------------------

WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1], {["User-Agent"] = os.getenv("WRK_UA")})
end
"""


@dataclass(frozen=True, slots=True)
class Phase:
    requests: int  # answered within the phase (wrk does not count the ones in flight when it stops)
    seconds: float
    p50_ms: float
    p99_ms: float
    bad_answers: int  # anything but 2xx/3xx, and socket errors
    server_cpu_s: float = float("nan")  # CPU time the server process used meanwhile (Linux only)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request_us(self) -> float:
        return self.server_cpu_s / self.requests * 1e6


def ensure_wrk() -> str:
    """The path of wrk, installed from Debian's package when missing (root only)."""
    found = shutil.which("wrk")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True, timeout=300
        )
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is required: apt-get install wrk")
    return found


def wrk(port: int, paths_file: Path, *, seconds: int, connections: int, folder: Path) -> Phase:
    """Run wrk (one thread) against `port` for `seconds`, GETting the paths in `paths_file` in turn."""
    script = folder / "paths.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "WRK_PATHS": str(paths_file), "WRK_UA": USER_AGENT}
    command = [ensure_wrk(), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    done = subprocess.run(
        [*command, "-s", str(script), f"http://127.0.0.1:{port}/"],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"wrk failed: {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> Phase:
    def ms(label: str) -> float:
        found = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if found is None:
            raise SystemExit(f"wrk printed no {label}% latency:\n{output}")
        return float(found[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found[2]]

    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(ms|s)", output, re.MULTILINE)
    if total is None:
        raise SystemExit(f"unexpected wrk output:\n{output}")
    seconds = float(total[2]) / (1000 if total[3] == "ms" else 1)
    bad = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    bad += sum(int(n) for n in errors.groups()) if errors else 0
    return Phase(int(total[1]), seconds, ms("50"), ms("99"), bad)


def run_phase(
    port: int, paths_file: Path, args: argparse.Namespace, *, pid: int, folder: Path
) -> list[Phase]:
    """Warm up, then measure; `pid` is the server's process, whose CPU time is counted. Returns both phases
    (the warm-up's requests are recorded too)."""
    phases = []
    if args.warmup > 0:
        phases.append(wrk(port, paths_file, seconds=args.warmup, connections=args.connections, folder=folder))
    cpu_before = process_cpu_s(pid)
    measured = wrk(port, paths_file, seconds=args.seconds, connections=args.connections, folder=folder)
    phases.append(replace(measured, server_cpu_s=process_cpu_s(pid) - cpu_before))
    return phases


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
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
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
    events: int  # stored by the worker once the stream was drained
    drain_rate: float  # events stored per second by one worker, from the stream that built up meanwhile


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
        pixels, clicks = folder / "pixels.txt", folder / "clicks.txt"
        pixels.write_text(
            "".join(
                open_url(base_url, lead_id=lead, delivery_id=d, key=key)[prefix:] + "\n" for lead, d in pairs
            )
        )
        clicks.write_text(
            "".join(
                click_url(base_url, lead_id=lead, delivery_id=d, url=TARGET, key=key)[prefix:] + "\n"
                for lead, d in pairs
            )
        )
        env = web_env(folder, database_url=database_url, base_url=base_url, log_level=args.log_level)
        reference_command = [sys.executable, __file__, "--serve-reference", str(reference_port)]
        with server(reference_command, env, folder / "reference.log", reference_port) as pid:
            *_, reference = run_phase(reference_port, pixels, args, pid=pid, folder=folder)
        web_command = [sys.executable, "-m", "nurture", "web", "--host", "127.0.0.1", "--port", str(web_port)]
        with server(web_command, env, folder / "web.log", web_port) as pid:
            pixel_phases = run_phase(web_port, pixels, args, pid=pid, folder=folder)
            click_phases = run_phase(web_port, clicks, args, pid=pid, folder=folder)
        phases = [*pixel_phases, *click_phases]
        if any(p.bad_answers for p in phases):
            raise SystemExit(
                f"the web gave {sum(p.bad_answers for p in phases)} bad answers or socket errors"
            )
        drain_rate = drain(env, folder)
        answered = sum(p.requests for p in phases)
        events = asyncio.run(count_events(database_url))
        # wrk stops with up to one request per connection in flight: answered and recorded, but not counted.
        if not answered <= events <= answered + len(phases) * args.connections:
            logs = "".join((folder / name).read_text()[-1500:] for name in ("web.log", "worker.log"))
            raise SystemExit(f"{events} events recorded for {answered} requests answered; logs:\n{logs}")
    finally:
        flush_redis()
        asyncio.run(drop_pg_database(name))
    return RunFigures(reference, pixel_phases[-1], click_phases[-1], events, drain_rate)


def drain(env: dict[str, str], folder: Path) -> float:
    """Run one `nurture worker` until the event stream is empty; return the events stored per second."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        backlog = int(client.xlen(STREAM))
        command = [sys.executable, "-m", "nurture", "worker"]
        with (
            (folder / "worker.log").open("w") as log,
            subprocess.Popen(command, env=env, cwd=folder, stderr=log) as worker,
        ):
            try:
                started = time.perf_counter()
                deadline = started + DRAIN_TIMEOUT_S
                while client.xlen(STREAM) or client.xpending(STREAM, "recorders")["pending"]:
                    if time.perf_counter() > deadline or worker.poll() is not None:
                        tail = (folder / "worker.log").read_text()[-2000:]
                        raise SystemExit(f"the worker did not drain the stream:\n{tail}")
                    time.sleep(0.05)
                seconds = time.perf_counter() - started
            finally:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.kill()
    finally:
        client.close()
    return backlog / seconds


async def count_events(database_url: str) -> int:
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            return int((await conn.exec_driver_sql("SELECT count(*) FROM events")).scalar_one())
    finally:
        await db.aclose()


def describe(number: int, run: RunFigures) -> str:
    def line(label: str, phase: Phase) -> str:
        return (
            f"{label:<20} {phase.rate:8,.0f} req/s  p50 {phase.p50_ms:6.2f} ms  "
            f"p99 {phase.p99_ms:6.2f} ms  ({phase.requests} in {phase.seconds:.2f} s; server "
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
            f"{run.events} events stored; one worker drained the stream at {run.drain_rate:,.0f} events/s",
        )
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds per phase (10)")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections (16)")
    add_runs_option(parser)
    parser.add_argument("--leads", type=int, default=1000, help="leads the URLs are spread over (1000)")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted seconds before each phase (2)")
    parser.add_argument("--smoke", action="store_true", help="one short run with few leads (CI)")
    parser.add_argument("--log-level", default="WARNING", help="the web's log level (INFO = production)")
    parser.add_argument("--serve-reference", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.warmup, args.runs, args.leads, args.connections = 1, 0, 1, 50, 4
    if not 0 < args.seconds <= MAX_SECONDS or not 1 <= args.connections <= MAX_CONNECTIONS:
        parser.error(f"--seconds is up to {MAX_SECONDS}, --connections 1..{MAX_CONNECTIONS}")
    if args.runs < 1 or args.leads < 1 or not 0 <= args.warmup <= MAX_SECONDS:
        parser.error("--runs and --leads must be positive, --warmup not negative")
    return args


def main() -> None:
    args = parse_args()
    if args.serve_reference is not None:
        serve_reference(args.serve_reference)
        return
    ensure_wrk()
    print(
        f"tracking_rps: wrk, {args.seconds:g} s per phase (+{args.warmup:g} s warm-up) over "
        f"{args.connections} keep-alive connections, {args.leads} leads, PostgreSQL + Redis, {args.runs} runs"
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
        print(summary(f"{label} p50", [p.p50_ms for p in phases], "ms", digits=2))
        print(summary(f"{label} p99", [p.p99_ms for p in phases], "ms", digits=2))
        cpu = [p.cpu_per_request_us for p in phases]
        print(summary(f"{label} server CPU per request", cpu, "us"))
    print(summary("pixel / reference", [r.pixel.rate / r.reference.rate for r in runs], "", digits=3))
    print(summary("click / reference", [r.click.rate / r.reference.rate for r in runs], "", digits=3))
    print(summary("worker drain", [r.drain_rate for r in runs], "events/s"))


if __name__ == "__main__":
    main()
