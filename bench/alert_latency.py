"""Benchmark: milliseconds from an event's HTTP request to its alert at the team's webhook.

Each event is a `page_visit` of /pricing for a lead of its own, posted to `POST /api/events` (API key from
`nurture apikey create`; stored by the web) or, with `--via beacon`, to the site beacon `POST /t/v` with the
lead's visitor token, as site.js does (with Redis: one stream entry, stored by the worker's consumer). A
pricing visit is a moment, so it alerts whatever the score, and no lead is ever inside its alert cooldown.
Events are sequential, one in flight: the next is posted once the alert of the last one arrived.
The client reads `perf_counter()` just before each request; the webhook receiver (tests/webhook_receiver.py,
http.server in a thread of this process, behind Apprise's `json://`) reads it when the alert's body is in.

Deployment shapes, each run on fresh storage:

  --embedded  one `nurture run` subprocess: SQLite, the in-process broker and worker threads, the outbox
              for the rep's email (the defaults).
  --scaled    `nurture web` + `nurture worker` subprocesses on a fresh PostgreSQL database and Redis db 14,
              the rep's email into bench/smtp_sink.py (its own process).

Neither flag: both. Besides the percentiles, each run splits every event's path by the instants the service
itself records (wall clock, same machine): the request until the web stored the event (`events.received_at`),
until the rescore actor started (`alerts.created_at`: the `scoring` queue), until the alert actor started
(`alerts.delivered_at`, which is the actor's `now`: the `alerts` queue), until the webhook got it (the sinks:
the rep's email first, then Apprise).

    .venv/bin/python bench/alert_latency.py [--embedded] [--scaled] [--events 300] [--runs 3]
                                            [--warmup 5] [--gap-ms 0] [--log-level WARNING]
                                            [--worker-timeout-ms MS]

    .venv/bin/python bench/alert_latency.py --via beacon [...]

PostgreSQL comes from NURTURE_BENCH_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test), Redis from
NURTURE_BENCH_REDIS (default redis://127.0.0.1:6379/14).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import redis
from common import (
    ROOT,
    SinkProcess,
    add_runs_option,
    create_pg_database,
    drop_pg_database,
    free_port,
    summary,
)
from sqlalchemy import select

from nurture.core.tracking import visitor_token
from nurture.db.engine import Database
from nurture.db.queries.tables import alerts, events, leads

if TYPE_CHECKING:
    from tests.webhook_receiver import WebhookReceiver

REDIS_URL = os.environ.get("NURTURE_BENCH_REDIS", "redis://127.0.0.1:6379/14")  # flushed before and after
SECRET = "bench-secret-key-0123456789abcdef"
PRICING = "https://acmeflow.example/pricing"
OWNER = "jordan.blake@acmeflow.example"  # a rep in reps.yaml: the alert also emails them
ALERT_TIMEOUT_S = 30.0
GRACE_S = 2.0  # after the last alert, for a late duplicate to show up in the count
MAX_EVENTS = 5000
STAGES = ("web", "scoring queue", "alerts queue", "sinks")


@dataclass(frozen=True, slots=True)
class Sample:
    email: str
    sent_at: float  # wall clock (time.time()), for the split against the database's instants
    request_ms: float  # until the API answered
    latency_ms: float  # until the webhook receiver had the alert


@dataclass(frozen=True, slots=True)
class RunFigures:
    samples: tuple[Sample, ...]
    sent: int  # events posted, warm-up included
    received: int  # webhook posts, warm-up included
    stages_ms: dict[str, float]  # median of each part of the path

    def latencies(self) -> list[float]:
        return [s.latency_ms for s in self.samples]


# --- the webhook receiver ---------------------------------------------------------------------------------


def webhook_receiver() -> WebhookReceiver:
    """A started tests/webhook_receiver.WebhookReceiver (the one the e2e test uses)."""
    if str(ROOT) not in sys.path:  # this script's folder is on the path, the repository's root is not
        sys.path.append(str(ROOT))
    from tests.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver()
    receiver.start()
    return receiver


# --- the processes -----------------------------------------------------------------------------------------


def base_env(folder: Path, args: argparse.Namespace, *, base_url: str, alert_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    if args.worker_timeout_ms is not None:  # read by dramatiq.worker at import: Worker's default timeout
        env["dramatiq_worker_timeout"] = str(args.worker_timeout_ms)
    env.update(
        NURTURE_CAMPAIGNS_DIR=str(ROOT / "campaigns"),
        NURTURE_TEMPLATES_DIR=str(ROOT / "templates"),
        NURTURE_REPS_FILE=str(ROOT / "reps.yaml"),
        NURTURE_SCORING_FILE=str(ROOT / "scoring.yaml"),
        NURTURE_DATA_DIR=str(folder / "var"),
        NURTURE_BASE_URL=base_url,
        NURTURE_ALERT_URLS=alert_url,
        NURTURE_LOG_LEVEL=args.log_level,
    )
    return env


@contextmanager
def nurture_process(args: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `nurture ARGS`, stderr into `log`; SIGTERM on the way out, and it must exit 0."""
    with log.open("w") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "nurture", *args], env=env, cwd=log.parent, stderr=handle
        )
        try:
            yield process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
            if code != 0:
                print(f"warning: nurture {args[0]} exited {code}; see {log}", file=sys.stderr)


def nurture_command(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nurture", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"nurture {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def wait_until_healthy(
    base_url: str, processes: Sequence[subprocess.Popen[bytes]], logs: Sequence[Path]
) -> None:
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base_url, timeout=2) as client:
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in processes):
                raise SystemExit(f"a nurture process exited at start:\n{tails(logs)}")
            try:
                if client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    raise SystemExit(f"the web did not answer /healthz within 60 s:\n{tails(logs)}")


def tails(logs: Sequence[Path], lines: int = 20) -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-lines:]) for p in logs)


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    database_url: str
    env: dict[str, str]
    base_url: str
    logs: tuple[Path, ...]


@contextmanager
def embedded(folder: Path, receiver: WebhookReceiver, args: argparse.Namespace) -> Iterator[Shape]:
    """One `nurture run`: SQLite under its data dir, the in-process broker, the outbox."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = base_env(folder, args, base_url=base_url, alert_url=receiver.json_url("/alerts"))
    logs = (folder / "run.log",)
    with nurture_process(["run", "--host", "127.0.0.1", "--port", str(port)], env, logs[0]) as run:
        wait_until_healthy(base_url, [run], logs)
        url = f"sqlite+aiosqlite:///{folder / 'var' / 'nurture.db'}"
        yield Shape("embedded", url, env, base_url, logs)


@contextmanager
def scaled(folder: Path, receiver: WebhookReceiver, args: argparse.Namespace) -> Iterator[Shape]:
    """`nurture web` + `nurture worker` on a fresh PostgreSQL database, Redis db 14 and an SMTP sink."""
    name = f"bench_alert_{os.getpid()}"
    database_url = asyncio.run(create_pg_database(name))
    flush_redis()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = base_env(folder, args, base_url=base_url, alert_url=receiver.json_url("/alerts"))
    logs = (folder / "web.log", folder / "worker.log")
    try:
        with ExitStack() as stack:
            sink = stack.enter_context(SinkProcess())
            env.update(
                NURTURE_DATABASE_URL=database_url,
                NURTURE_REDIS_URL=REDIS_URL,
                NURTURE_SMTP_URL=sink.url,
                NURTURE_SECRET_KEY=SECRET,
            )
            worker = stack.enter_context(nurture_process(["worker"], env, logs[1]))
            web_args = ["web", "--host", "127.0.0.1", "--port", str(port)]
            web = stack.enter_context(nurture_process(web_args, env, logs[0]))
            wait_until_healthy(base_url, [web, worker], logs)
            yield Shape("scaled", database_url, env, base_url, logs)
    finally:
        flush_redis()
        asyncio.run(drop_pg_database(name))


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


# --- one run -----------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `values`."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(rank) - 1]


def post_leads(client: httpx.Client, emails: Sequence[str]) -> None:
    rows = [
        {"email": e, "first_name": "Bench", "company": "Bench Co", "grade": "intent", "owner": OWNER}
        for e in emails
    ]
    for start in range(0, len(rows), 1000):
        response = client.post("/api/leads", json=rows[start : start + 1000])
        if response.status_code != 200 or response.json()["rejected"]:
            raise SystemExit(f"POST /api/leads: {response.status_code} {response.text[:300]}")


def one_event(
    client: httpx.Client, receiver: WebhookReceiver, email: str, logs: Sequence[Path], visitor: str | None
) -> Sample:
    """Post one pricing visit (to the API, or to the beacon when `visitor` is the lead's token)."""
    sent_at = time.time()
    started = time.perf_counter()
    if visitor is None:
        response = client.post("/api/events", json={"email": email, "type": "page_visit", "url": PRICING})
    else:
        response = client.post("/t/v", json={"token": visitor, "url": PRICING})
    answered = time.perf_counter()
    if response.status_code != (202 if visitor is None else 204):
        raise SystemExit(f"{response.request.url.path}: {response.status_code} {response.text[:300]}")
    try:
        post = receiver.wait_for(lambda p: email in p.text, timeout_s=ALERT_TIMEOUT_S)
    except TimeoutError:
        raise SystemExit(f"no alert for {email} within {ALERT_TIMEOUT_S} s:\n{tails(logs)}") from None
    return Sample(email, sent_at, (answered - started) * 1000, (post.received_at - started) * 1000)


def measure(shape: Shape, receiver: WebhookReceiver, args: argparse.Namespace, number: int) -> RunFigures:
    key = json.loads(nurture_command(shape.env, "apikey", "create", "bench", "--format", "json"))["key"]
    total = args.warmup + args.events
    emails = [f"bench.{number}.{i}@{shape.name}.example" for i in range(total)]
    receiver.clear()
    headers = {"authorization": f"Bearer {key}", "user-agent": "alert-latency-bench"}
    with httpx.Client(base_url=shape.base_url, headers=headers, timeout=30) as client:
        post_leads(client, emails)
        visitors = asyncio.run(visitor_tokens(shape, emails)) if args.via == "beacon" else {}
        samples = []
        for index, email in enumerate(emails):
            sample = one_event(client, receiver, email, shape.logs, visitors.get(email))
            if index >= args.warmup:
                samples.append(sample)
            if args.gap_ms:
                time.sleep(args.gap_ms / 1000)
    time.sleep(GRACE_S)
    stages = asyncio.run(split(shape.database_url, samples, receiver))
    return RunFigures(tuple(samples), sent=total, received=receiver.count(), stages_ms=stages)


async def visitor_tokens(shape: Shape, emails: Sequence[str]) -> dict[str, str]:
    """Each lead's visitor token (the `nl` parameter site.js reads), signed with the web's key."""
    key = (
        shape.env.get("NURTURE_SECRET_KEY")
        or (Path(shape.env["NURTURE_DATA_DIR"]) / "secret.key").read_text()
    )
    db = Database(shape.database_url)
    try:
        async with db.transaction() as conn:
            rows = await conn.execute(
                select(leads.c.email, leads.c.id).where(leads.c.email.in_(list(emails)))
            )
            ids = {row.email: row.id for row in rows}
    finally:
        await db.aclose()
    return {email: visitor_token(lead_id, key=key.strip().encode()) for email, lead_id in ids.items()}


async def split(database_url: str, samples: Sequence[Sample], receiver: WebhookReceiver) -> dict[str, float]:
    """The median of each part of the path, from the instants the service recorded for each event."""
    offset = time.time() - time.perf_counter()  # the receiver stamps perf_counter(); the database wall time
    arrived = {}
    for post in receiver.posts:
        for sample in samples:
            if sample.email in post.text:
                arrived[sample.email] = post.received_at + offset
    db = Database(database_url)
    try:
        async with db.transaction() as conn:
            rows = await conn.execute(
                select(leads.c.email, events.c.received_at, alerts.c.created_at, alerts.c.delivered_at)
                .join(events, events.c.lead_id == leads.c.id)
                .join(alerts, alerts.c.lead_id == leads.c.id)
            )
            instants: dict[str, tuple[datetime, datetime, datetime | None]] = {
                r.email: (r.received_at, r.created_at, r.delivered_at) for r in rows
            }
    finally:
        await db.aclose()
    parts: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for sample in samples:
        received_at, created_at, delivered_at = instants[sample.email]
        if delivered_at is None or sample.email not in arrived:
            continue
        points = (sample.sent_at, received_at.timestamp(), created_at.timestamp(), delivered_at.timestamp())
        ends = (*points[1:], arrived[sample.email])
        for stage, start, end in zip(STAGES, points, ends, strict=True):
            parts[stage].append((end - start) * 1000)
    return {stage: statistics.median(values) if values else float("nan") for stage, values in parts.items()}


def describe(number: int, run: RunFigures) -> str:
    latencies = run.latencies()
    split_text = ", ".join(f"{stage} {ms:.0f}" for stage, ms in run.stages_ms.items())
    request = statistics.median(s.request_ms for s in run.samples)
    return (
        f"run {number}: {len(latencies)} events, alert after p50 {percentile(latencies, 50):.0f} ms, "
        f"p90 {percentile(latencies, 90):.0f}, p99 {percentile(latencies, 99):.0f}, "
        f"max {max(latencies):.0f} (API answer p50 {request:.1f} ms); received {run.received}/{run.sent}\n"
        f"    median split (ms): {split_text}"
    )


def run_shape(name: str, args: argparse.Namespace, receiver: WebhookReceiver, tmp: Path) -> list[RunFigures]:
    opener = embedded if name == "embedded" else scaled
    runs: list[RunFigures] = []
    print(f"{name}:", flush=True)
    for number in range(1, args.runs + 1):
        folder = tmp / f"{name}-run{number}"
        folder.mkdir()
        with opener(folder, receiver, args) as shape:
            run = measure(shape, receiver, args, number)
        runs.append(run)
        print("  " + describe(number, run), flush=True)
        if run.received != run.sent:
            raise SystemExit(f"{name}: the webhook received {run.received} alerts for {run.sent} events")
    return runs


def report(name: str, runs: Sequence[RunFigures]) -> None:
    for label, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0)):
        print(summary(f"{name} alert latency {label}", [percentile(r.latencies(), q) for r in runs], "ms"))
    for stage in STAGES:
        print(summary(f"{name}   median {stage}", [r.stages_ms[stage] for r in runs], "ms", digits=1))
    received = sum(r.received for r in runs)
    sent = sum(r.sent for r in runs)
    print(f"{name}: {received} alerts received for {sent} events sent")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embedded", action="store_true", help="`nurture run` on SQLite")
    parser.add_argument(
        "--scaled", action="store_true", help="`nurture web` + `nurture worker` on PG + Redis"
    )
    parser.add_argument(
        "--events", type=int, default=300, help=f"measured events per run (default 300, max {MAX_EVENTS})"
    )
    add_runs_option(parser)
    parser.add_argument(
        "--via", choices=("api", "beacon"), default="api", help="post events to the API or the site beacon"
    )
    parser.add_argument("--warmup", type=int, default=5, help="events before the measured ones (default 5)")
    parser.add_argument("--gap-ms", type=int, default=0, help="pause after each alert arrived (default 0)")
    parser.add_argument("--log-level", default="WARNING", help="the services' log level (INFO = production)")
    parser.add_argument(
        "--worker-timeout-ms",
        type=int,
        help="set dramatiq_worker_timeout for the services: the longest a worker's idle consumer sleeps "
        "between polls of Redis (Dramatiq's default: 1000); what a worker_timeout in "
        "nurture.service.start_worker would do",
    )
    args = parser.parse_args()
    if not 1 <= args.events <= MAX_EVENTS or args.runs < 1 or args.warmup < 0 or args.gap_ms < 0:
        parser.error(f"--events is 1..{MAX_EVENTS}, --runs positive, --warmup and --gap-ms not negative")
    if args.worker_timeout_ms is not None and args.worker_timeout_ms < 1:
        parser.error("--worker-timeout-ms must be positive")
    return args


def main() -> None:
    args = parse_args()
    shapes = [s for s in ("embedded", "scaled") if getattr(args, s)] or ["embedded", "scaled"]
    print(
        f"alert_latency: {args.events} events per run (+{args.warmup} warm-up) via {args.via}, one in "
        f"flight, gap {args.gap_ms} ms, {args.runs} runs, shapes {', '.join(shapes)}, dramatiq "
        f"worker_timeout {args.worker_timeout_ms or 'default (1000)'} ms"
    )
    receiver = webhook_receiver()
    results: dict[str, list[RunFigures]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="nurture-bench-") as tmp:
            for name in shapes:
                results[name] = run_shape(name, args, receiver, Path(tmp))
    finally:
        receiver.stop()
    print()
    for name, runs in results.items():
        report(name, runs)


if __name__ == "__main__":
    main()
